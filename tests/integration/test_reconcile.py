"""Registry invariants against a real MLflow server: interrupted moves, ``mlcd status``, ``mlcd reconcile``, races.

Versions are registered from empty runs (their source is the run's artifact folder): the registry never loads a
model, so no weights are needed. Half-done moves are made the way a crash leaves them: the intent recorded, some
aliases moved with the plain MLflow client, the rest not.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.integration


@pytest.fixture
def registry(tracking_uri: str, mlcd_home: Path) -> Any:
    from mlcd.registry import ModelRegistry

    return ModelRegistry(tracking_uri, f"reconcile-{uuid.uuid4().hex[:8]}")


def _versions(registry: Any, n: int) -> list[str]:
    client = registry.client
    exp = client.get_experiment_by_name("reconcile-tests") or None
    exp_id = exp.experiment_id if exp else client.create_experiment("reconcile-tests")
    out = []
    for _ in range(n):
        run = client.create_run(exp_id)
        client.set_terminated(run.info.run_id)
        out.append(registry.register_run_model(run.info.run_id, f"runs:/{run.info.run_id}/model"))
    return out


def _cli(args: list[str], registry: Any) -> Any:
    from mlcd.cli import cli

    env = {"MLFLOW_TRACKING_URI": registry.tracking_uri, "MLCD_MODEL_NAME": registry.model_name}
    return CliRunner().invoke(cli, args, env=env, catch_exceptions=False)


def test_a_rollback_after_an_interrupted_promotion_gives_champion_back(registry: Any) -> None:
    v1, v2 = _versions(registry, 2)
    registry.bootstrap_champion(v1, "tests")
    registry.start_canary(v2, "tests", "canary")
    # promote(v2) crashed right after its commit: intent recorded, previous and champion moved, records not.
    registry.record_event(v2, "promote_started", {"old_champion": v1, "old_previous": None}, "retrain")
    registry.client.set_registered_model_alias(registry.model_name, "previous", v1)
    registry.client.set_registered_model_alias(registry.model_name, "champion", v2)
    kinds = {v["violation"] for v in registry.violations()}
    assert "champion_record" in kinds
    # The guard now rolls the canary back: champion must not stay on a version marked rolled_back.
    registry.rollback(v2, "guard: error rate", {"errors": 7}, "guard")
    assert registry.aliases() == {"champion": v1}
    assert registry.get_state(v1).state.value == "champion"
    assert registry.get_state(v2).state.value == "rolled_back"
    status = registry.status()
    assert status["consistent"], (status["problems"], status["violations"])


def test_reconcile_repairs_a_retired_champion_and_canary_and_says_why(registry: Any) -> None:
    v1, v2, v3 = _versions(registry, 3)
    registry.bootstrap_champion(v1, "tests")
    registry.start_canary(v2, "tests", "canary")
    registry.promote(v2, "tests", "canary passed")
    # A rollback of v2 crashed after recording its intent and the state, before moving the alias.
    registry.record_event(v2, "rollback_started", {"restore": v1}, "guard")
    registry.record_transition(v2, "rolled_back", "guard: accuracy dropped", "guard")
    # And a rejected version got the canary alias (a hand edit in the MLflow UI).
    registry.reject(v3, ["accuracy below the champion"], "retrain")
    registry.client.set_registered_model_alias(registry.model_name, "canary", v3)

    status = _cli(["status"], registry)
    assert status.exit_code == 0
    assert "VIOLATIONS" in status.output and "champion_retired" in status.output
    assert "canary_retired" in status.output

    dry = _cli(["reconcile", "--dry-run"], registry)
    assert dry.exit_code == 0 and "champion_retired" in dry.output, dry.output
    assert registry.aliases()["champion"] == v2  # a dry run changes nothing

    fixed = _cli(["reconcile"], registry)
    assert fixed.exit_code == 0, fixed.output
    assert f"champion alias moved {v2} -> {v1}" in fixed.output and "why:" in fixed.output
    assert f"canary alias removed from {v3}" in fixed.output
    assert registry.aliases() == {"champion": v1}
    assert registry.get_state(v1).state.value == "champion"
    info = registry.get_version_info(v2)
    assert "champion_retired" in info["tags"]["mlcd.reconciled"]
    assert any(e.get("event") == "reconciled" for e in registry.get_state(v2).history)
    assert registry.status()["consistent"]

    again = _cli(["reconcile"], registry)  # idempotent
    assert again.exit_code == 0 and "consistent: nothing to repair" in again.output
    assert "VIOLATIONS" not in _cli(["status"], registry).output


def test_reconcile_completes_a_half_done_promotion_from_its_intent(registry: Any) -> None:
    v1, v2, v3 = _versions(registry, 3)
    registry.bootstrap_champion(v1, "tests")
    registry.start_canary(v2, "tests", "canary")
    registry.promote(v2, "tests", "passed")  # v1 previous, v2 champion
    registry.start_canary(v3, "tests", "canary")
    # promote(v3) crashed between its steps: previous moved to v2, champion not yet.
    registry.record_event(v3, "promote_started", {"old_champion": v2, "old_previous": v1}, "retrain")
    registry.client.set_registered_model_alias(registry.model_name, "previous", v2)
    # A re-run honours the recorded intent: v1 (the real old previous) is archived, not left "previous".
    registry.promote(v3, "retrain", "re-run")
    assert registry.aliases() == {"champion": v3, "previous": v2}
    assert [registry.get_state(v).state.value for v in (v1, v2, v3)] == ["archived", "previous", "champion"]
    assert registry.violations() == []
    assert registry.reconcile()["repairs"] == []


def test_guard_and_retrain_racing_on_the_aliases_leave_one_champion(registry: Any) -> None:
    from mlcd.registry import ModelRegistry, RegistryError
    from mlcd.registry.state import IllegalTransitionError

    v1, v2 = _versions(registry, 2)
    registry.bootstrap_champion(v1, "tests")
    registry.start_canary(v2, "tests", "canary")
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def as_writer(fn_name: str) -> None:
        other = ModelRegistry(registry.tracking_uri, registry.model_name)  # its own client, as a DAG task has
        barrier.wait()
        try:
            if fn_name == "promote":
                other.promote(v2, "airflow:mlcd_retrain", "canary passed")
            else:
                other.rollback(v2, "guard: error rate", {}, "airflow:mlcd_guard")
        except (RegistryError, IllegalTransitionError) as err:  # the loser is refused, never half-applied
            errors.append(err)

    threads = [threading.Thread(target=as_writer, args=(n,)) for n in ("promote", "rollback")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    aliases = registry.aliases()
    assert aliases.get("champion") == v1, (aliases, errors)  # either order ends with v2 rolled back, v1 serving
    assert registry.get_state(v2).state.value == "rolled_back"
    status = registry.status()
    assert status["consistent"], (status["problems"], status["violations"])


def test_bounded_retries_give_up_in_seconds_when_mlflow_is_down(mlcd_home: Path) -> None:
    import os
    import time

    from mlcd.mlflow_server import free_port
    from mlcd.registry import RegistryUnavailableError
    from mlcd.registry.retries import bounded_registry

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: what the rollback path meets with MLflow down
    before = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    t0 = time.monotonic()
    with bounded_registry(dead, "down-model") as registry:
        with pytest.raises(RegistryUnavailableError, match="unavailable"):
            registry.rollback("3", "guard: error rate", {}, "guard")
    elapsed = time.monotonic() - t0
    assert elapsed < 10, f"bounded call took {elapsed:.1f}s"  # MLflow's defaults retry for minutes here
    assert os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES") == before  # restored after the block
