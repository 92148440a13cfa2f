"""The guard against a real gateway on 127.0.0.1 with real models from the real MLflow server, under live load.

A model that always answers class 3 at canary is caught and rolled back (traffic 100 % stable, canary alias
gone, version ``rolled_back`` with the evidence, a second rollback a no-op); an honest retrain at canary under the
same traffic is not. The trigger is driven the way the triggerer drives it (``run().asend(None)``).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlcd.airflow.guard import CanaryHealthTrigger, GuardReason, GuardStatus
from mlcd.guard.watch import Decision, Guard, GuardConfig, PollResult, watch
from mlcd.registry.state import RolloutState
from mlcd.rollout.actions import rollback
from mlcd.rollout.analysis import GuardThresholds
from mlcd.rollout.router import RouteStatus
from mlcd.rollout.spec import Outcome
from tests.modelkit import BROKEN_CLASS, logged_models, rollout, traffic

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def uris(mlflow_server: Any, reference_data: Any) -> dict[str, str]:
    return logged_models(mlflow_server.url, reference_data.x_train[:2000], reference_data.y_train[:2000])


@pytest.fixture(scope="module")
def images(reference_data: Any) -> np.ndarray:
    return reference_data.x_test[:500]


def test_a_broken_canary_is_rolled_back_with_its_evidence(mlflow_server: Any, uris: dict[str, str],
                                                          images: np.ndarray, tmp_path: Path) -> None:
    with rollout(mlflow_server.url, uris, "guard-broken", "broken", tmp_path, weight=50) as ro:
        guard = Guard(GuardConfig(ro.url, version=ro.canary, poll_interval_s=1.0))
        polls: list[PollResult] = []
        t0 = time.monotonic()
        with traffic(ro.url, images, rate=40, max_s=60) as load:
            result = watch(guard, timeout_s=45, on_poll=polls.append)
            rb = rollback(ro.registry, ro.router, ro.canary, result.reason, result.as_dict(), "tests")
            assert ro.router.get_routes() == RouteStatus(ro.stable, None, 0)
            time.sleep(1.0)  # requests already in flight at the switch finish
            at_switch = dict(load.by_version)
            time.sleep(2.0)
            after_switch = dict(load.by_version)
        elapsed = time.monotonic() - t0

        assert result.decision is Decision.BREACH, result.reason
        assert elapsed < 30, f"rollback took {elapsed:.1f}s"
        failed = [c["name"] for c in result.as_dict()["verdict"]["checks"] if c["outcome"] == "fail"]
        assert "class_distribution" in failed
        assert all(p.decision is Decision.WATCH for p in polls[:-1])
        assert (rb.version, rb.restored, rb.already, rb.state) == (ro.canary, ro.stable, False, "rolled_back")
        # Requests after the switch all went to stable: stable's count grew, the canary's did not move.
        assert after_switch.get(ro.stable, 0) > at_switch.get(ro.stable, 0)
        assert after_switch.get(ro.canary, 0) == at_switch.get(ro.canary, 0) > 0
        assert load.failed == 0

        record = ro.registry.get_state(ro.canary)
        assert record.state is RolloutState.ROLLED_BACK
        assert ro.registry.aliases() == {"champion": ro.stable}
        evidence = json.loads(record.tags["mlcd.rollback_evidence"])
        check = next(c for c in evidence["verdict"]["checks"] if c["name"] == "class_distribution")
        assert check["p_value"] < check["alpha"] and check["counts"]["canary_shares"][BROKEN_CLASS] > 0.99
        # A handful of canary predictions is overwhelming evidence (the sequential test), not a fixed 50.
        assert 1 <= evidence["verdict"]["canary"]["requests"] < 200
        assert record.tags["mlcd.rolled_back_by"] == "tests"
        assert "class_distribution" in record.tags["mlcd.rollback_checks"]
        entries = len(record.history)

        again = rollback(ro.registry, ro.router, ro.canary, "again", None, "tests")
        assert again.already and again.restored == ro.stable
        assert len(ro.registry.get_state(ro.canary).history) == entries  # nothing recorded twice


def test_a_healthy_canary_is_not_rolled_back_and_bakes_to_healthy(mlflow_server: Any, uris: dict[str, str],
                                                                  images: np.ndarray, tmp_path: Path) -> None:
    with rollout(mlflow_server.url, uris, "guard-healthy", "healthy_b", tmp_path, weight=50) as ro:
        guard = Guard(GuardConfig(ro.url, version=ro.canary, poll_interval_s=1.0, bake_s=4.0))
        polls: list[PollResult] = []
        with traffic(ro.url, images, rate=40, max_s=60):
            deadline = time.monotonic() + 10
            state = None
            while time.monotonic() < deadline:
                result = guard.poll(state)
                polls.append(result)
                assert result.decision is Decision.WATCH, result.reason
                state = result.state
                time.sleep(1.0)
            # The canary task promotes it; the guard bakes it and ends healthy.
            ro.registry.promote(ro.canary, "tests", "canary passed")
            ro.router.set_routes(ro.canary, None, 0)
            deadline = time.monotonic() + 20
            while True:
                result = guard.poll(state)
                polls.append(result)
                if result.decision is not Decision.WATCH or time.monotonic() > deadline:
                    break
                state = result.state
                time.sleep(1.0)
        assert result.decision is Decision.HEALTHY and result.reason.startswith("bake_complete"), result.reason
        judged = [p.verdict for p in polls if p.verdict is not None]
        # Side by side, the honest retrain had enough data to pass (not merely "no data yet") and never failed;
        # in the bake the engine judged the new champion alone against what the old one served.
        assert any(v.outcome is Outcome.PASS for v in judged)
        assert all(v.outcome is not Outcome.FAIL for v in judged)
        assert judged[-1].check("error_rate_vs_reference").counts["requests"] > 0
        assert ro.registry.get_state(ro.canary).state is RolloutState.CHAMPION


def test_trigger_serializes_exactly_and_yields_one_breach_event(mlflow_server: Any, uris: dict[str, str],
                                                               images: np.ndarray, tmp_path: Path) -> None:
    thresholds = GuardThresholds(min_predictions=40).as_dict()
    trigger = CanaryHealthTrigger("http://127.0.0.1:1", version="7", poll_interval_s=0.5, bake_s=10.0,
                                  grace_s=20.0, thresholds=thresholds, state={"look": 3}, max_watch_s=60.0,
                                  max_failures=2)
    assert trigger.serialize() == (
        "mlcd.airflow.guard.CanaryHealthTrigger",
        {"gateway_url": "http://127.0.0.1:1", "version": "7", "poll_interval_s": 0.5, "bake_s": 10.0,
         "grace_s": 20.0, "thresholds": thresholds, "state": {"look": 3}, "max_watch_s": 60.0, "max_failures": 2,
         "blind_s": None},
    )
    # A gateway that is not there and no canary known: after the blind window, an error event with the reason,
    # never an exception out of run() (with a canary known it fails closed: tests/unit/test_failsafe.py).
    down = CanaryHealthTrigger("http://127.0.0.1:1", poll_interval_s=0.05, max_failures=2, blind_s=0.2)
    event = asyncio.run(down.run().asend(None))
    assert (event.payload["status"], event.payload["reason"]) == (GuardStatus.ERROR, GuardReason.SCRAPE_FAILED)

    with rollout(mlflow_server.url, uris, "guard-trigger", "broken", tmp_path, weight=50) as ro:
        trigger = CanaryHealthTrigger(ro.url, poll_interval_s=1.0, grace_s=30.0)
        with traffic(ro.url, images, rate=40, max_s=60):
            event = asyncio.run(asyncio.wait_for(trigger.run().asend(None), timeout=45))
    payload = event.payload
    assert payload["status"] == "breach" and payload["reason"] == "canary_failed", payload
    assert payload["result"]["version"] == ro.canary and payload["result"]["stable"] == ro.stable
    json.dumps(payload)  # the event crosses the triggerer/worker boundary as JSON
