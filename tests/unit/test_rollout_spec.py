"""The rollout spec's pure functions on constructed metric series (and the metrics parsing they feed on)."""

from __future__ import annotations

import math

import pytest

from mlcd.rollout.canary import RolloutProgress, observe, window_outcome
from mlcd.rollout.metrics import (
    diff,
    histogram_quantile,
    parse_metrics,
    snapshot_to_dict,
    variant_stats,
    window_stats,
)
from mlcd.rollout.spec import (
    Action,
    Outcome,
    RolloutSpec,
    VariantStats,
    next_action,
    next_weight,
)
from tests.gatewaysim import Behaviour, SimGateway, behaviours

pytestmark = pytest.mark.unit

def test_default_steps_and_next_weight() -> None:
    spec = RolloutSpec()
    assert spec.steps == (5, 25, 50, 100)
    walk, w = [], 0
    while (nxt := next_weight(spec, w)) is not None:
        walk.append(nxt)
        w = nxt
    assert walk == [5, 25, 50, 100]
    assert next_weight(spec, 7) == 25  # between steps: the next one up
    assert next_weight(spec, 100) is None


@pytest.mark.parametrize("steps", [(), (5, 25), (25, 5, 100), (0, 100), (50, 50, 100), (5, 150)])
def test_bad_steps_are_refused(steps: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        RolloutSpec(steps=steps)


def test_spec_round_trips_and_refuses_unknown_keys() -> None:
    spec = RolloutSpec(steps=(10, 100), analysis_window_s=5, min_requests=20)
    assert RolloutSpec.from_dict(spec.to_dict()) == spec
    assert RolloutSpec.from_dict(None) == RolloutSpec()
    with pytest.raises(ValueError, match="unknown rollout spec keys: step"):
        RolloutSpec.from_dict({"step": [5, 100]})
    with pytest.raises(ValueError):
        RolloutSpec(min_requests=0)


def test_spec_feeds_the_engine_and_validates_its_new_fields() -> None:
    spec = RolloutSpec(min_requests=20, min_stable_requests=40, max_error_rate_increase=0.03,
                       max_p99_latency_ratio=1.4, p99_latency_slack_s=0.002, alpha=0.01,
                       thresholds={"min_class_shift": 0.2})
    t = spec.guard_thresholds()
    assert (t.alpha, t.min_requests, t.min_predictions, t.min_latency_samples) == (0.01, 20, 20, 20)
    assert (t.min_error_rate_increase, t.min_latency_ratio, t.min_latency_increase_s, t.min_class_shift) == (
        0.03, 1.4, 0.002, 0.2)
    assert RolloutSpec(analysis_window_s=30, inconclusive_limit=3).max_window_s == 120
    assert RolloutSpec.from_dict(spec.to_dict()) == spec
    for bad in ({"on_undecided": "rollback"}, {"alpha": 1.0}, {"poll_interval_s": 0}):
        with pytest.raises(ValueError):
            RolloutSpec.from_dict(bad)
    with pytest.raises(ValueError, match="unknown guard threshold keys"):
        RolloutSpec(thresholds={"typo": 1}).guard_thresholds()


def _window(spec: RolloutSpec, canary: str, weight: int, seconds: float, rate: float = 50.0, seed: int = 0,
            progress: RolloutProgress | None = None) -> RolloutProgress:
    """One window at ``weight`` through the real gateway metrics, polled every 2 s like the trigger does."""
    gw = SimGateway(Behaviour(), behaviours([canary])[0], seed)
    gw.set_routes("1", "2", spec.routed_weight(weight))  # as CanaryRollout routes the step
    p = progress or RolloutProgress("2", "1")
    p.weight, p.window = weight, {}
    p.last = snapshot_to_dict(gw.snapshot())
    for _ in range(int(seconds / 2)):
        gw.run(2.0, rate)
        if observe(spec, p, gw.snapshot()) is Outcome.FAIL:
            break
    return p


def test_a_window_passes_only_with_the_minimum_traffic_at_this_weight() -> None:
    spec = RolloutSpec(min_requests=30, min_stable_requests=30)
    p = _window(spec, "healthy", 25, 20)
    assert window_outcome(spec, p).outcome is Outcome.PASS
    assert p.verdict is not None and p.verdict["outcome"] == "pass"
    # The engine passed on the whole rollout so far, but this weight's window is thin: inconclusive, not pass.
    thin = _window(spec, "healthy", 50, 4, rate=2.0, progress=p)
    v = window_outcome(spec, thin)
    assert v.outcome is Outcome.INCONCLUSIVE and any("canary requests" in r for r in v.reasons), v.reasons


def test_the_canary_step_gains_the_class_distribution_check() -> None:
    spec = RolloutSpec()
    p = _window(spec, "one_class", 5, 60)
    v = window_outcome(spec, p)
    assert v.outcome is Outcome.FAIL and any(r.startswith("class_distribution") for r in v.reasons)


def test_the_last_step_keeps_a_holdback_on_stable_and_is_judged_side_by_side() -> None:
    spec = RolloutSpec(min_requests=30, min_stable_requests=30)
    assert (spec.holdback_pct, spec.routed_weight(100), spec.routed_weight(50)) == (5, 95, 50)
    p = _window(spec, "healthy", 50, 20, seed=1)
    before = p.analysis["events"]["latency"]
    slow = _window(spec, "slow", 100, 60, seed=2, progress=p)  # 2x slower: stable serves 5 % alongside
    assert slow.analysis["events"]["latency"] > before
    assert window_outcome(spec, slow).outcome is Outcome.FAIL
    broken = _window(spec, "errors", 100, 20, seed=3, progress=_window(spec, "healthy", 50, 20, seed=1))
    v = window_outcome(spec, broken)
    # Side by side, and against all of stable's counts (the last step's 5 % alone shows a spike only slowly).
    assert v.outcome is Outcome.FAIL and any(r.startswith("error_rate") for r in v.reasons), v.reasons
    assert broken.analysis["majority_control"] is True


def test_with_no_holdback_the_last_step_compares_with_the_past_and_only_alerts() -> None:
    spec = RolloutSpec(min_requests=30, min_stable_requests=30, holdback_pct=0)
    assert spec.routed_weight(100) == 100
    broken = _window(spec, "errors", 100, 20, seed=3, progress=_window(spec, "healthy", 50, 20, seed=1))
    v = window_outcome(spec, broken)
    assert v.outcome is not Outcome.FAIL
    assert broken.verdict is not None and "error_rate_vs_reference" in broken.verdict["alerts"]
    slow = _window(spec, "slow", 100, 20, seed=2, progress=_window(spec, "healthy", 50, 20, seed=1))
    assert slow.analysis["events"]["latency"] == _window(spec, "healthy", 50, 20, seed=1).analysis["events"][
        "latency"]  # nothing side by side: latency not judged


@pytest.mark.parametrize("bad", [{"holdback_pct": -1}, {"holdback_pct": 60}, {"holdback_pct": 2.5},
                                 {"holdback_pct": 10, "steps": (5, 95, 100)}])
def test_bad_holdbacks_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="holdback_pct|the step before 100"):
        RolloutSpec.from_dict(bad)


def test_next_action_limits_for_fail_and_inconclusive() -> None:
    spec = RolloutSpec(failure_limit=1, inconclusive_limit=2)
    assert next_action(spec, [Outcome.PASS]) is Action.ADVANCE
    assert next_action(spec, ["inconclusive"]) is Action.REPEAT
    assert next_action(spec, ["fail"]) is Action.REPEAT  # one failure tolerated
    assert next_action(spec, ["fail", "pass", "fail"]) is Action.ABORT_FAILED
    assert next_action(spec, ["inconclusive", "pass", "inconclusive"]) is Action.REPEAT
    assert next_action(spec, ["inconclusive"] * 3) is Action.ABORT_INCONCLUSIVE
    # Counted at the current weight when given: earlier weights' inconclusive windows do not add up.
    assert next_action(spec, ["inconclusive"] * 5, inconclusive_at_weight=1) is Action.REPEAT
    strict = RolloutSpec()  # Argo's default failureLimit 0: the first failure aborts
    assert next_action(strict, ["pass", "fail"]) is Action.ABORT_FAILED
    with pytest.raises(ValueError):
        next_action(spec, [])


def _exposition(requests: int, errors: int, buckets: dict[str, int], variant: str = "canary", version: str = "2") -> str:
    lines = [
        "# TYPE mlcd_gateway_requests counter",
        f'mlcd_gateway_requests_total{{variant="{variant}",version="{version}"}} {requests}',
        "# TYPE mlcd_gateway_errors counter",
        f'mlcd_gateway_errors_total{{variant="{variant}",version="{version}"}} {errors}',
        "# TYPE mlcd_gateway_request_latency_seconds histogram",
    ]
    for le, count in buckets.items():
        lines.append(f'mlcd_gateway_request_latency_seconds_bucket{{le="{le}",variant="{variant}",version="{version}"}} {count}')
    total = list(buckets.values())[-1]
    lines += [
        f'mlcd_gateway_request_latency_seconds_count{{variant="{variant}",version="{version}"}} {total}',
        f'mlcd_gateway_request_latency_seconds_sum{{variant="{variant}",version="{version}"}} 1.0',
        "# TYPE mlcd_gateway_predictions counter",
        f'mlcd_gateway_predictions_total{{predicted_class="3",variant="{variant}",version="{version}"}} {requests}',
    ]
    return "\n".join(lines) + "\n"


def test_window_stats_from_two_scrapes() -> None:
    before = parse_metrics(_exposition(100, 1, {"0.005": 90, "0.01": 99, "+Inf": 99}))
    after = parse_metrics(_exposition(300, 3, {"0.005": 250, "0.01": 295, "+Inf": 297}))
    stats = window_stats(before, after, "canary", "2")
    assert (stats.requests, stats.errors, stats.latency_samples) == (200, 2, 198)
    assert stats.p99_latency_s is not None and 0.005 < stats.p99_latency_s <= 0.01
    assert after[("canary", "2")].classes == {3: 300.0}
    assert window_stats(before, after, "stable", "1") == VariantStats()
    assert window_stats(before, after, "canary", None) == VariantStats()


def test_counter_reset_means_the_gateway_restarted() -> None:
    before = parse_metrics(_exposition(500, 5, {"0.01": 495, "+Inf": 495}))
    after = parse_metrics(_exposition(40, 0, {"0.01": 40, "+Inf": 40}))
    assert variant_stats(diff(before[("canary", "2")], after[("canary", "2")])).requests == 40


def test_histogram_quantile_matches_prometheus() -> None:
    buckets = {0.1: 50.0, 0.2: 100.0, math.inf: 100.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.15)
    assert histogram_quantile(0.99, {0.1: 0.0, math.inf: 0.0}) is None
    assert histogram_quantile(0.99, {0.1: 10.0, math.inf: 100.0}) == pytest.approx(0.1)  # top finite bound
