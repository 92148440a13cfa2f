"""Drill: the metrics endpoint is unreachable for a minute (compressed: fail-closed window 2 s, outage 6 s) while
a canary serves 25 %. Both the canary task and the guard fail closed: the canary goes to 0 % through the router
(the gateway itself is fine), the rollout is paused with the reason, and nothing steps it back up while paused."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.faults.kit import MetricsProxy, assert_healthy_ending, traffic, wait_for

pytestmark = pytest.mark.faults

BLIND_S, OUTAGE_S = 2.0, 6.0


def _paused_reason(registry: Any, version: str) -> str:
    from mlcd.rollout.canary import is_paused

    record = registry.get_state(version)
    assert is_paused(record), record.history[-3:]
    return str(record.last_event("paused")["d"]["reason"])


def test_canary_task_fails_closed_when_metrics_go_dark(drill: Any) -> None:
    from mlcd.rollout.canary import CanaryRollout, RolloutProgress
    from mlcd.rollout.spec import Action, RolloutSpec

    proxy = MetricsProxy(drill.gateway.url).up()
    spec = RolloutSpec(steps=(25, 50, 100), analysis_window_s=30, poll_interval_s=0.5, min_requests=5,
                       min_stable_requests=5, metrics_blind_s=BLIND_S)
    rollout = CanaryRollout(drill.registry, drill.router, spec, proxy.url, actor="drill-canary")
    try:
        with traffic(drill.gateway.url) as seen:
            p = rollout.begin_step(RolloutProgress(drill.v2, drill.v1))
            assert p.weight == 25 and drill.router.get_routes().canary_weight == 25
            proxy.down()
            t0 = time.monotonic()
            while time.monotonic() - t0 < OUTAGE_S:  # the window's polls, as run_rollout and the trigger make them
                rollout.poll(p)
                if rollout.paused:
                    break
                time.sleep(spec.poll_interval_s)
            failed_closed_in = time.monotonic() - t0
            routes = drill.router.get_routes()
            assert routes.canary == drill.v2 and routes.canary_weight == 0, routes
            assert BLIND_S <= failed_closed_in < BLIND_S + 3, failed_closed_in
            reason = _paused_reason(drill.registry, drill.v2)
            assert reason.startswith("metrics_unreadable") and "failed closed" in reason, reason
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - t0)))
            proxy.up()  # the metrics come back: a paused rollout still holds at 0 % until a person resumes it

            result = rollout.finish_step(p)
            assert result.action is Action.REPEAT and "failed closed" in result.verdict.reasons[0]
            p = rollout.begin_step(result.progress)
            assert p.weight == 0 and drill.router.get_routes().canary_weight == 0  # no step back up while paused
            before, stable_before = seen.get(drill.v2, 0), seen.get(drill.v1, 0)
            wait_for(lambda: seen.get(drill.v1, 0) > stable_before + 10, what="stable answers")
            assert seen.get(drill.v2, 0) == before  # users on stable alone
    finally:
        proxy.down()
    assert_healthy_ending(drill.router, drill.registry, healthy={drill.v1}, bad={drill.v2})


def test_guard_fails_closed_when_metrics_go_dark(drill: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from mlcd.airflow.guard import CanaryHealthSensor, CanaryHealthTrigger, GuardReason
    from mlcd.guard.watch import Guard, GuardConfig

    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", json.dumps({"conn_type": "http", "host": drill.mlflow.url}))
    proxy = MetricsProxy(drill.gateway.url).up()
    try:
        with traffic(drill.gateway.url):
            first = Guard(GuardConfig(proxy.url, poll_interval_s=0.3, blind_s=BLIND_S)).poll()
            assert first.state.phase == "canary"
            trigger = CanaryHealthTrigger(proxy.url, poll_interval_s=0.3, state=first.state.to_dict(),
                                          blind_s=BLIND_S, max_watch_s=120)
            proxy.down()
            t0 = time.monotonic()
            event = asyncio.run(trigger.run().asend(None))
            blind_in = time.monotonic() - t0
            assert event.payload["reason"] == GuardReason.METRICS_BLIND.value, event.payload
            assert BLIND_S <= blind_in < BLIND_S + 3, blind_in
            # The sensor resumes on the event (worker side): traffic first through the gateway, then the pause.
            sensor = CanaryHealthSensor(task_id="watch", gateway_url=drill.gateway.url, blind_s=BLIND_S)
            out = sensor.execute_complete({"run_id": "drill"}, event.payload)
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - t0)))
            proxy.up()
    finally:
        proxy.down()
    assert out["fail_closed"]["traffic_safe"] and out["fail_closed"]["paused"], out
    assert out["fail_closed"]["weight_before"] == 25
    routes = drill.router.get_routes()
    assert routes.canary == drill.v2 and routes.canary_weight == 0, routes
    reason = _paused_reason(drill.registry, drill.v2)
    assert reason.startswith("guard: metrics_unreadable"), reason
    assert_healthy_ending(drill.router, drill.registry, healthy={drill.v1}, bad={drill.v2})
