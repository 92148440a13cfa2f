"""The guard's poll logic on constructed gateway counters (a real prometheus registry, no server), the event
mapping, the canary pause rule, and the rollback notifier against a real webhook on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from prometheus_client import generate_latest

from mlcd.airflow.guard import GuardReason, _reason_of, is_breach
from mlcd.airflow.notifiers import RollbackNotifier
from mlcd.guard.watch import (
    Decision,
    Guard,
    GuardConfig,
    GuardState,
    Phase,
    PollResult,
    StopReason,
    add_counters,
    parse_scrape,
)
from mlcd.registry.state import RolloutRecord, RolloutState
from mlcd.rollout.canary import is_paused
from mlcd.rollout.metrics import SeriesCounters
from mlcd.serving.metrics import GatewayMetrics
from tests.gatewaysim import serve_metrics

pytestmark = pytest.mark.unit


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Gw:
    """A real GatewayMetrics registry standing in for the gateway's /metrics text."""

    def __init__(self) -> None:
        self.m = GatewayMetrics()

    def serve(self, stable: str, canary: str | None, weight: int = 50, holdback: str | None = None,
              holdback_weight: int = 5) -> None:
        self.m.set_served({"stable": stable, "canary": canary, "holdback": holdback}, weight if canary else 0)
        self.m.set_holdback_weight(holdback_weight if holdback else 0)

    def hit(self, version: str, variant: str, n: int, cls: int | None = None, latency: float = 0.004) -> None:
        for i in range(n):
            self.m.requests.labels(version, variant).inc()
            self.m.latency.labels(version, variant).observe(latency)
            self.m.predictions.labels(version, variant, str(cls if cls is not None else i % 10)).inc()

    def scrape(self, _url: str) -> Any:
        return parse_scrape(generate_latest(self.m.registry).decode())


def _guard(gw: Gw, clock: FakeClock, **kw: Any) -> Guard:
    return Guard(GuardConfig("http://127.0.0.1:1", poll_interval_s=1, **kw), scrape=gw.scrape, clock=clock)


def test_no_canary_within_the_grace_period_is_healthy() -> None:
    gw, clock = Gw(), FakeClock()
    gw.serve("1", None)
    guard = _guard(gw, clock, grace_s=10)
    r = guard.poll()
    assert r.decision is Decision.WATCH and r.state.phase == Phase.WAITING.value
    clock.t += 11
    r = guard.poll(r.state)
    assert r.decision is Decision.HEALTHY and r.stop is StopReason.NO_CANARY
    assert _reason_of(r) is GuardReason.NO_CANARY


def test_a_one_class_canary_breaches_and_traffic_before_the_first_poll_is_ignored() -> None:
    gw, clock = Gw(), FakeClock()
    gw.serve("1", "2")
    gw.hit("2", "canary", 500, cls=3)  # before the guard started: not its business
    guard = _guard(gw, clock)
    r = guard.poll()
    assert (r.decision, r.state.version, r.state.stable) == (Decision.WATCH, "2", "1")
    gw.hit("1", "stable", 60)
    gw.hit("2", "canary", 5, cls=3)  # a handful: inconclusive, never pass
    r = guard.poll(r.state)
    assert r.decision is Decision.WATCH and r.verdict is not None and r.verdict.outcome.value == "inconclusive"
    for _ in range(5):  # a few more polls of the same: overwhelming evidence within a handful of predictions
        gw.hit("1", "stable", 60)
        gw.hit("2", "canary", 5, cls=3)
        r = guard.poll(r.state)
        if r.decision is not Decision.WATCH:
            break
    assert r.decision is Decision.BREACH and "class_distribution" in r.reason
    assert r.verdict is not None and r.verdict.canary["requests"] <= 30  # the 500 before the guard do not count
    payload = r.as_dict()
    json.dumps(payload)
    assert is_breach(payload) and not is_breach({"decision": "healthy"}) and not is_breach(None)
    assert _reason_of(r) is GuardReason.CANARY_FAILED


def _canary_phase(gw: Gw, guard: Guard, polls: int = 3) -> Any:
    r = guard.poll()
    for _ in range(polls):
        gw.hit("1", "stable", 150)
        gw.hit("2", "canary", 50)
        r = guard.poll(r.state)
        assert r.decision is Decision.WATCH, r.reason
    return r


def test_promotion_starts_the_bake_period_and_a_clean_bake_ends_healthy() -> None:
    gw, clock = Gw(), FakeClock()
    gw.serve("1", "2")
    guard = _guard(gw, clock, bake_s=30)
    r = _canary_phase(gw, guard)
    gw.serve("2", None)  # the canary task promoted it
    r = guard.poll(r.state)
    assert r.state.phase == Phase.BAKE.value and r.decision is Decision.WATCH
    gw.hit("2", "stable", 100)
    clock.t += 10
    r = guard.poll(r.state)
    assert r.decision is Decision.WATCH and r.verdict is not None
    # Compared with what the old champion served concurrently (450 requests), latency not judged alone.
    assert r.verdict.stable["requests"] == 450
    assert r.verdict.check("error_rate_vs_reference").counts["requests"] == 100
    clock.t += 25
    r = guard.poll(r.state)
    assert r.decision is Decision.HEALTHY and r.stop is StopReason.BAKE_COMPLETE, r.reason
    assert _reason_of(r) is GuardReason.BAKE_COMPLETE and r.as_dict()["stop"] == "bake_complete"


def test_a_bake_period_without_traffic_ends_unverified_not_healthy() -> None:
    gw, clock = Gw(), FakeClock()
    gw.serve("1", "2")
    guard = _guard(gw, clock, bake_s=30)
    r = _canary_phase(gw, guard)
    gw.serve("2", None)
    r = guard.poll(r.state)
    gw.hit("2", "stable", 3)
    clock.t += 31
    r = guard.poll(r.state)
    assert r.decision is Decision.UNVERIFIED and r.reason.startswith("bake_unverified"), r.reason
    assert _reason_of(r) is GuardReason.BAKE_UNVERIFIED
    assert not is_breach(r.as_dict())


def test_a_bake_with_traffic_but_nothing_to_compare_with_ends_unverified() -> None:
    # The guard first sees the version already promoted (skip_canary): no old champion served next to it, so its
    # traffic, however much, cannot show it healthy (a one-class champion would otherwise bake "healthy").
    gw, clock = Gw(), FakeClock()
    gw.serve("2", None)
    guard = Guard(GuardConfig("http://127.0.0.1:1", version="2", poll_interval_s=1, bake_s=30), scrape=gw.scrape,
                  clock=clock)
    r = guard.poll()
    assert r.state.phase == Phase.BAKE.value
    for _ in range(4):
        gw.hit("2", "stable", 100, cls=3)
        clock.t += 10
        r = guard.poll(r.state)
    assert r.decision is Decision.UNVERIFIED, r.reason
    assert "class_distribution_vs_reference: no reference" in r.reason
    assert _reason_of(r) is GuardReason.BAKE_UNVERIFIED


def test_a_champion_that_breaks_in_its_bake_period_breaches_against_its_holdback() -> None:
    gw, clock = Gw(), FakeClock()
    gw.serve("1", "2")
    guard = _guard(gw, clock, bake_s=300)
    r = _canary_phase(gw, guard)
    gw.serve("2", None, holdback="1", holdback_weight=10)  # promoted; the old champion keeps 10 % as the control
    r = guard.poll(r.state)
    for _ in range(10):
        gw.hit("2", "stable", 90, cls=7)
        gw.hit("1", "holdback", 10)
        r = guard.poll(r.state)
        if r.decision is not Decision.WATCH:
            break
    assert r.decision is Decision.BREACH and r.state.phase == "bake", r.reason
    assert _reason_of(r) is GuardReason.CHAMPION_FAILED
    assert r.state.holdback == "1" and r.state.holdback_weight == pytest.approx(0.1)
    assert r.verdict is not None and r.verdict.check("class_distribution").outcome.value == "fail"
    assert r.state.bake_control_requests > 0


def test_without_a_holdback_the_past_only_alerts_and_the_bake_ends_unverified_not_rolled_back() -> None:
    # holdback 0 (a user's choice): a champion that now answers one class differs from what the old champion
    # served minutes ago, but a change in what users send would look the same: alert, never a rollback alone.
    gw, clock = Gw(), FakeClock()
    gw.serve("1", "2")
    guard = _guard(gw, clock, bake_s=30)
    r = _canary_phase(gw, guard)
    gw.serve("2", None)
    r = guard.poll(r.state)
    for _ in range(8):
        gw.hit("2", "stable", 60, cls=7)
        clock.t += 5
        r = guard.poll(r.state)
        if r.decision is not Decision.WATCH:
            break
    assert r.decision is Decision.UNVERIFIED, r.reason
    assert r.verdict is not None and "class_distribution_vs_reference" in r.verdict.alerts
    assert "ALERT" in r.reason and not is_breach(r.as_dict())


def test_the_weight_is_a_ratio_and_a_changed_weight_is_not_used_as_the_stratum() -> None:
    gw, clock = Gw(), FakeClock()
    gw.serve("1", "2", weight=25)
    scrape = gw.scrape("")
    assert scrape.canary_weight == pytest.approx(0.25)
    assert 'mlcd_gateway_canary_weight 0.25' in generate_latest(gw.m.registry).decode()
    guard = _guard(gw, clock)
    r = guard.poll()
    assert r.state.last_weight == pytest.approx(0.25)
    gw.serve("1", "2", weight=50)
    r = guard.poll(r.state)
    assert r.state.last_weight == pytest.approx(0.5)
    with pytest.raises(ValueError, match="0-1 ratio"):
        parse_scrape("# TYPE mlcd_gateway_canary_weight gauge\nmlcd_gateway_canary_weight 25.0\n")


def test_a_version_taken_out_elsewhere_ends_the_watch() -> None:
    gw, clock = Gw(), FakeClock()
    gw.serve("1", "2")
    guard = _guard(gw, clock, version="2")
    r = guard.poll()
    gw.serve("1", None)  # the rollout aborted it itself
    r = guard.poll(r.state)
    assert r.decision is Decision.HEALTHY and r.stop is StopReason.VERSION_RETIRED
    assert _reason_of(r) is GuardReason.VERSION_RETIRED
    assert GuardState.from_dict(r.state.to_dict()) == r.state


def test_the_airflow_reason_comes_from_the_stop_reason_not_the_message() -> None:
    """Every core StopReason has its trigger reason; the message is for people and is never parsed."""
    assert {r.value for r in StopReason} <= {r.value for r in GuardReason}
    misleading = PollResult(Decision.HEALTHY, "no_canary: (this text says otherwise)", GuardState(),
                            stop=StopReason.VERSION_RETIRED)
    assert _reason_of(misleading) is GuardReason.VERSION_RETIRED
    bake = GuardState(phase=Phase.BAKE.value)
    assert _reason_of(PollResult(Decision.BREACH, "bake_complete: no", bake)) is GuardReason.CHAMPION_FAILED
    assert _reason_of(PollResult(Decision.BREACH, "x", GuardState(phase=Phase.CANARY.value))) is GuardReason.CANARY_FAILED
    assert PollResult(Decision.UNVERIFIED, "x", bake).stop is StopReason.BAKE_UNVERIFIED
    assert PollResult(Decision.WATCH, "bake_complete: still watching", bake).stop is None
    with pytest.raises(ValueError, match="StopReason"):
        PollResult(Decision.HEALTHY, "bake_complete: a healthy end must say why", bake)
    with pytest.raises(ValueError, match="without a StopReason"):
        _reason_of(PollResult(Decision.WATCH, "x", bake))


def test_add_counters_sums_two_periods() -> None:
    a = SeriesCounters(requests=2, errors=1, buckets={0.1: 2.0}, classes={1: 2.0})
    b = SeriesCounters(requests=3, buckets={0.1: 1.0, 1.0: 3.0}, classes={2: 3.0})
    s = add_counters(a, b)
    assert (s.requests, s.errors, s.buckets, s.classes) == (5, 1, {0.1: 3.0, 1.0: 3.0}, {1: 2.0, 2: 3.0})


def test_pause_is_the_latest_of_paused_and_resumed() -> None:
    def rec(*events: tuple[str, str]) -> RolloutRecord:
        return RolloutRecord("2", RolloutState.CANARY, [{"t": t, "event": e} for e, t in events])

    assert not is_paused(rec())
    assert is_paused(rec(("paused", "2026-01-01T00:00:01.000Z")))
    assert not is_paused(rec(("paused", "2026-01-01T00:00:01.000Z"), ("resumed", "2026-01-01T00:00:02.000Z")))
    assert is_paused(rec(("resumed", "2026-01-01T00:00:01.000Z"), ("paused", "2026-01-01T00:00:03.000Z")))


def test_notifier_posts_to_the_webhook_connection_and_logs_without_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    received: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            received.append({"body": json.loads(self.rfile.read(int(self.headers["Content-Length"]))),
                             "auth": self.headers.get("Authorization"), "path": self.path})
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("AIRFLOW_CONN_MLCD_ALERTS", json.dumps(
            {"conn_type": "http", "host": f"http://127.0.0.1:{server.server_port}/hooks/mlcd", "password": "s3"}))
        RollbackNotifier(message="version 2 rolled back: class_distribution").notify({})
    finally:
        server.shutdown()
    assert received == [{"body": {"text": "version 2 rolled back: class_distribution", "source": "mlcd"},
                         "auth": "Bearer s3", "path": "/hooks/mlcd"}]

    monkeypatch.delenv("AIRFLOW_CONN_MLCD_ALERTS")
    capsys.readouterr()
    RollbackNotifier(message="version 3 rolled back").notify({})
    out = capsys.readouterr()
    # Airflow's structlog writes task-side logs to the console (and the task log in a run).
    assert "ALERT (no mlcd_alerts connection, logged only): version 3 rolled back" in out.out + out.err


def test_the_trigger_carries_its_state_and_a_restart_continues_the_same_test(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Polls through a real /metrics endpoint on 127.0.0.1; serialize() and the checkpoint carry the evidence."""
    import asyncio

    from mlcd.airflow.guard import CanaryHealthTrigger

    monkeypatch.setenv("MLCD_HOME", str(tmp_path))
    gw = Gw()
    gw.serve("1", "2", weight=25)

    def scrape() -> bytes:
        gw.hit("1", "stable", 30)
        gw.hit("2", "canary", 10)
        return generate_latest(gw.m.registry)

    with serve_metrics(scrape) as url:
        first = Guard(GuardConfig(url, poll_interval_s=0.05)).poll()
        # Watch windows of seconds, not tenths: each poll also checkpoints, and a loaded CI machine (three pytest
        # processes, image builds) once fit only two polls into 0.6 s.
        trigger = CanaryHealthTrigger(url, poll_interval_s=0.05, state=first.state.to_dict(), max_watch_s=2.0)

        async def until_timeout() -> Any:
            return await trigger.run().asend(None)

        event = asyncio.run(until_timeout())  # healthy traffic: watched until max_watch_s
        assert event.payload["reason"] == GuardReason.WATCH_TIMEOUT.value
        carried = trigger.serialize()[1]["state"]
        assert carried["polls"] > 2 and carried["analysis"]["looks"] == carried["look"] > 2
        # The triggerer restarts with the kwargs stored at deferral (the first state): the checkpoint wins, so
        # the evidence, samples and looks continue instead of starting from zero.
        restarted = CanaryHealthTrigger(url, poll_interval_s=0.05, state=first.state.to_dict(), max_watch_s=1.0)
        asyncio.run(restarted.run().asend(None))
        again = restarted.serialize()[1]["state"]
        assert again["polls"] > carried["polls"]
        assert again["analysis"]["canary"]["requests"] > carried["analysis"]["canary"]["requests"]
