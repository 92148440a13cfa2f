"""Fail closed: unreadable metrics or vanished canary series are never read as healthy (issue 13, item 2).

The guard is fed the gateway's real metrics registry (``GatewayMetrics``) through its ``scrape`` hook, or a real
closed port on 127.0.0.1; the triggers run their real async generators against a port nobody listens on.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
from typing import Any

import pytest

from mlcd.airflow.canary import AnalysisWindowTrigger
from mlcd.airflow.guard import CanaryHealthTrigger, GuardReason, GuardStatus
from mlcd.guard.watch import Decision, Guard, GuardConfig
from mlcd.mlflow_server import free_port
from mlcd.rollout.canary import RolloutProgress, blind_expired, note_scrape
from mlcd.rollout.failsafe import METRICS_ERRORS, default_blind_s
from mlcd.rollout.metrics import SeriesCounters
from mlcd.rollout.spec import RolloutSpec
from tests.unit.test_guard_watch import FakeClock, Gw

pytestmark = pytest.mark.unit


class Flaky:
    """The real metrics of ``gw`` until ``down`` is set, then a connection refused (what a dead gateway gives)."""

    def __init__(self, gw: Gw) -> None:
        self.gw, self.down = gw, False

    def __call__(self, url: str) -> Any:
        if self.down:
            raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))
        return self.gw.scrape(url)


def _canary_seen(blind_s: float = 30.0) -> tuple[Guard, Gw, Flaky, FakeClock, Any]:
    gw, clock = Gw(), FakeClock()
    gw.serve("1", "2", weight=25)
    flaky = Flaky(gw)
    guard = Guard(GuardConfig("http://127.0.0.1:1", poll_interval_s=1, blind_s=blind_s), scrape=flaky, clock=clock)
    first = guard.poll()
    assert first.decision is Decision.WATCH and first.state.phase == "canary"
    return guard, gw, flaky, clock, first.state


def test_unreadable_metrics_watch_until_the_blind_window_then_fail_closed() -> None:
    guard, _gw, flaky, clock, state = _canary_seen(blind_s=30)
    flaky.down = True
    decisions = []
    for _ in range(4):  # 0, 10, 20 s blind: still watching (a restarting gateway is not a breach)
        r = guard.poll(state)
        decisions.append(r.decision)
        state = r.state
        clock.t += 10
    assert decisions[:3] == [Decision.WATCH] * 3
    assert decisions[3] is Decision.BLIND, decisions
    assert r.reason.startswith("metrics_unreadable") and "failing closed" in r.reason
    assert r.state.version == "2" and r.state.failures == 4


def test_metrics_back_within_the_window_reset_the_blind_clock() -> None:
    guard, gw, flaky, clock, state = _canary_seen(blind_s=30)
    flaky.down = True
    state = guard.poll(state).state
    clock.t += 25
    flaky.down = False
    gw.hit("1", "stable", 30)
    gw.hit("2", "canary", 10)
    r = guard.poll(state)
    assert r.decision is Decision.WATCH and r.state.blind_since is None and r.state.failures == 0
    flaky.down = True
    clock.t += 25  # 25 s blind again, but counted from this outage: not yet 30
    assert guard.poll(r.state).decision is Decision.WATCH


def test_a_gateway_that_lost_its_models_is_not_read_as_version_retired() -> None:
    guard, gw, _flaky, clock, state = _canary_seen(blind_s=5)
    gw.m.set_served({"stable": None, "canary": None}, 0)  # restarted without its models: no model_info at all
    r = guard.poll(state)
    assert r.decision is Decision.WATCH and r.reason.startswith("canary_series_missing")
    clock.t += 6
    r = guard.poll(r.state)
    assert r.decision is Decision.BLIND and r.reason.startswith("canary_series_missing")


def test_a_real_retirement_is_still_healthy() -> None:
    guard, gw, _flaky, _clock, state = _canary_seen()
    gw.serve("1", None)  # rolled back by someone: stable alone, the canary gone
    r = guard.poll(state)
    assert r.decision is Decision.HEALTHY and r.reason.startswith("version_retired")


def test_blind_window_setting_and_spec_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLCD_METRICS_BLIND_S", raising=False)
    assert default_blind_s() == 30.0 and RolloutSpec().blind_s == 30.0
    monkeypatch.setenv("MLCD_METRICS_BLIND_S", "2.5")
    assert default_blind_s() == 2.5 and GuardConfig("http://x").blind_s == 2.5
    assert RolloutSpec.from_dict({"metrics_blind_s": 7}).blind_s == 7.0  # the spec wins over the setting
    monkeypatch.setenv("MLCD_METRICS_BLIND_S", "soon")
    with pytest.raises(ValueError, match="MLCD_METRICS_BLIND_S must be a number"):
        default_blind_s()
    with pytest.raises(ValueError, match="metrics_blind_s must be > 0"):
        RolloutSpec.from_dict({"metrics_blind_s": 0})
    assert issubclass(urllib.error.URLError, METRICS_ERRORS)


def test_note_scrape_counts_a_vanished_canary_series_as_blind() -> None:
    spec = RolloutSpec(metrics_blind_s=10)
    p = RolloutProgress("2", "1", weight=25)
    before = {("canary", "2"): SeriesCounters(requests=40), ("stable", "1"): SeriesCounters(requests=120)}
    from mlcd.rollout.metrics import snapshot_to_dict

    p.last = snapshot_to_dict(before)
    usable, why = note_scrape(spec, p, {("stable", "1"): SeriesCounters(requests=5)}, now=100.0)
    assert usable is None and why == "canary_series_missing" and p.blind_since == 100.0
    assert not blind_expired(spec, p, now=109.0) and blind_expired(spec, p, now=110.0)
    usable, why = note_scrape(spec, p, None, now=111.0)
    assert why == "metrics_unreadable" and p.blind_since == 100.0  # the clock runs from the first blind read
    usable, why = note_scrape(spec, p, before, now=112.0)
    assert usable == before and why == "" and p.blind_since is None


def test_the_guard_trigger_fails_closed_on_a_dead_endpoint() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    state = {"started_at": time.time(), "phase": "canary", "version": "2", "stable": "1", "polls": 3}
    trigger = CanaryHealthTrigger(dead, poll_interval_s=0.1, state=state, blind_s=0.5, max_watch_s=30)
    assert trigger.serialize()[1]["blind_s"] == 0.5

    async def first() -> Any:
        return await trigger.run().asend(None)

    t0 = time.monotonic()
    event = asyncio.run(first())
    assert 0.4 <= time.monotonic() - t0 < 10
    assert event.payload["status"] == GuardStatus.FAIL_CLOSED.value
    assert event.payload["reason"] == GuardReason.METRICS_BLIND.value
    assert event.payload["result"]["version"] == "2"
    assert trigger.serialize()[1]["state"]["blind_since"] is not None  # a restart keeps counting, not resets


def test_the_window_trigger_ends_early_when_blind_and_carries_the_blindness() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    progress = RolloutProgress("2", "1", weight=25, window_started=time.time()).to_dict()
    spec = RolloutSpec(poll_interval_s=0.1, analysis_window_s=60, metrics_blind_s=0.5).to_dict()
    trigger = AnalysisWindowTrigger(progress=progress, window_s=60, gateway_url=dead, spec=spec)

    async def first() -> Any:
        return await trigger.run().asend(None)

    t0 = time.monotonic()
    event = asyncio.run(first())
    assert time.monotonic() - t0 < 10  # not the 60 s window: the task must fail closed now
    assert event.payload["progress"]["blind_since"] is not None


def test_blind_before_any_canary_is_an_error_not_a_quiet_healthy() -> None:
    from mlcd.guard.watch import MetricsBlindError

    clock = FakeClock()
    flaky = Flaky(Gw())
    flaky.down = True
    guard = Guard(GuardConfig("http://127.0.0.1:1", poll_interval_s=1, blind_s=10, grace_s=5), scrape=flaky,
                  clock=clock)
    r = guard.poll()
    assert r.decision is Decision.WATCH  # blind for 0 s; and the grace period never ends a blind watch healthy
    clock.t += 11
    with pytest.raises(MetricsBlindError, match="no canary known"):
        guard.poll(r.state)
