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
                        "retries": [t.retries for t in d.tasks], "max_active_runs": d.max_active_runs}
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
