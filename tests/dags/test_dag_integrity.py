"""DAG files parse fast, import nothing heavy, touch no Connection, and carry owner/retries/tags/docs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.dags

DAGS = Path(__file__).resolve().parents[2] / "dags"

_PROBE = r"""
import json, sys, time
from airflow.sdk import BaseHook
from airflow.models.connection import Connection
calls = []
def _refuse(*args, **kwargs):
    calls.append(args[1:] if args else kwargs)
    raise RuntimeError("Connection looked up while parsing")
BaseHook.get_connection = classmethod(_refuse)
Connection.get_connection_from_secrets = classmethod(_refuse)
from airflow.dag_processing.dagbag import DagBag
start = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
elapsed = time.perf_counter() - start
heavy = sorted(m for m in ("tensorflow", "keras", "mlflow", "great_expectations", "kubernetes", "sklearn")
               if m in sys.modules)
print(json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "dags": {d.dag_id: {"owner": d.owner, "tags": sorted(d.tags), "doc": bool(d.doc_md),
                        "retries": [t.retries for t in d.tasks], "max_active_runs": d.max_active_runs,
                        "native": d.render_template_as_native_obj,
                        "dagrun_timeout": d.dagrun_timeout.total_seconds() if d.dagrun_timeout else None,
                        "timeouts": {t.task_id: t.execution_timeout.total_seconds() if t.execution_timeout else None
                                     for t in d.tasks},
                        "pools": {t.task_id: t.pool for t in d.tasks},
                        "success_callbacks": {t.task_id: [type(c).__name__ for c in (t.on_success_callback or [])]
                                              for t in d.tasks},
                        "failure_callbacks": [type(c).__name__ for c in (d.on_failure_callback or [])]
                                             if isinstance(d.on_failure_callback, list)
                                             else [type(d.on_failure_callback).__name__]}
             for d in bag.dags.values()},
    "seconds": elapsed, "heavy": heavy, "connection_calls": len(calls)}))
"""


@pytest.fixture(scope="module")
def parsed() -> dict:
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-c", _PROBE, str(DAGS)], capture_output=True, text=True, env=env,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_no_import_errors(parsed: dict) -> None:
    assert parsed["errors"] == {}
    assert {"mlcd_retrain", "mlcd_landing_watch"} <= set(parsed["dags"])


def test_parsing_is_light(parsed: dict) -> None:
    assert parsed["heavy"] == [], f"heavy libraries imported while parsing: {parsed['heavy']}"
    assert parsed["connection_calls"] == 0
    assert parsed["seconds"] < 5.0


def test_every_dag_is_documented_owned_and_retried(parsed: dict) -> None:
    for dag_id, dag in parsed["dags"].items():
        assert dag["owner"] == "mlcd", dag_id
        assert "mlcd" in dag["tags"], dag_id
        assert dag["doc"], dag_id
        assert dag["max_active_runs"] == 1, dag_id
        assert all(r >= 1 for r in dag["retries"]), dag_id


def test_every_task_and_run_is_bounded_and_params_render_natively(parsed: dict) -> None:
    for dag_id, dag in parsed["dags"].items():
        assert dag["native"] is True, dag_id  # dict params reach operators as dicts, not their repr
        assert dag["dagrun_timeout"] and dag["dagrun_timeout"] > 0, dag_id
        for task_id, timeout in dag["timeouts"].items():
            assert timeout and timeout > 0, f"{dag_id}.{task_id} has no execution_timeout"
            # A task may not outlive its run: the run's timeout would cut it anyway, without saying why.
            assert timeout <= dag["dagrun_timeout"], f"{dag_id}.{task_id}"
    retrain = parsed["dags"]["mlcd_retrain"]
    assert retrain["pools"]["train"] == "training"
    assert {p for t, p in retrain["pools"].items() if t != "train"} == {"default_pool"}
    assert retrain["timeouts"]["train"] >= 3600 and retrain["timeouts"]["canary"] >= 3600


def test_notifications_are_callbacks(parsed: dict) -> None:
    guard = parsed["dags"]["mlcd_guard"]
    assert guard["success_callbacks"]["rollback"] == ["RollbackNotifier"]
    assert "notify" not in guard["timeouts"]  # no hand-called notifier task any more
    retrain = parsed["dags"]["mlcd_retrain"]
    assert retrain["success_callbacks"]["canary"] == ["RolloutNotifier"]
    assert retrain["failure_callbacks"] == ["RolloutNotifier"]


def test_training_pool_is_created_once(airflow_db: Path) -> None:
    from mlcd.embedded import POOLS, ensure_pools

    airflow = str(Path(sys.executable).with_name("airflow"))
    env = dict(os.environ)
    assert ensure_pools(airflow, env) == list(POOLS) == ["training"]
    assert ensure_pools(airflow, env) == []  # idempotent: an existing pool (maybe resized) is kept
    from airflow.models.pool import Pool

    assert Pool.get_pool("training").slots == 1
