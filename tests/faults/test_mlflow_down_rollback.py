"""Drill: MLflow dies while a canary is rolled back. Traffic goes back to stable in under 5 s anyway (the router
needs no registry); once MLflow returns, the rollback's retry completes the record and reconcile finds nothing
left to repair."""

from __future__ import annotations

import time
from typing import Any

import pytest
from click.testing import CliRunner

from tests.faults.kit import ADMIN, assert_healthy_ending, traffic, wait_for

pytestmark = pytest.mark.faults


def test_mlflow_killed_during_a_rollback(drill: Any) -> None:
    from mlcd.cli import cli
    from mlcd.registry.reconcile import reconcile
    from mlcd.registry.retries import bounded_registry
    from mlcd.rollout.actions import rollback

    with traffic(drill.gateway.url) as seen:
        wait_for(lambda: seen.get(drill.v2, 0) > 0, what="the canary answers before the drill")
        drill.mlflow.kill()
        env = {"MLFLOW_TRACKING_URI": drill.mlflow.url, "MLCD_MODEL_NAME": drill.name,
               "MLCD_GATEWAY_URL": drill.gateway.url, "MLCD_ADMIN_TOKEN": ADMIN}
        t0 = time.monotonic()
        out = CliRunner().invoke(cli, ["rollback", "--version", drill.v2, "--reason", "drill: canary misbehaves"], env=env)
        moved_in = time.monotonic() - t0
        routes = drill.router.get_routes()
        assert (routes.stable, routes.canary) == (drill.v1, None), routes
        assert moved_in < 5.0, f"traffic back on stable after {moved_in:.1f}s with MLflow down"
        assert out.exit_code == 1 and "error:" in out.output  # the record could not be written: said in one line
        before = dict(seen)
        wait_for(lambda: seen.get(drill.v1, 0) > before.get(drill.v1, 0) + 10, what="stable answers")
        assert seen.get(drill.v2, 0) == before.get(drill.v2, 0)  # no answer from the canary since

    # MLflow returns (same store): the rollback's retry (the guard task's, or the person's) completes the record.
    drill.mlflow.start()
    assert drill.registry.get_state(drill.v2).state.value == "canary"  # nothing was half-written meanwhile
    with bounded_registry(drill.mlflow.url, drill.name) as registry:
        done = rollback(registry, drill.router, drill.v2, "drill: canary misbehaves", {"manual": True}, "drill")
    assert done.restored == drill.v1 and done.state.value == "rolled_back"
    assert reconcile(drill.registry)["repairs"] == []  # converged: nothing left to repair
    assert drill.registry.aliases() == {"champion": drill.v1}
    assert_healthy_ending(drill.router, drill.registry, healthy={drill.v1}, bad={drill.v2})
