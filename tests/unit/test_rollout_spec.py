"""The rollout spec's pure functions on constructed metric series (and the metrics parsing they feed on)."""

from __future__ import annotations

import math

import pytest

from mlcd.rollout.metrics import diff, histogram_quantile, parse_metrics, variant_stats, window_stats
from mlcd.rollout.spec import (
    Action,
    Outcome,
    RolloutSpec,
    VariantStats,
    next_action,
    next_weight,
    step_verdict,
)

pytestmark = pytest.mark.unit

SPEC = RolloutSpec(min_requests=50, min_stable_requests=50, max_error_rate_increase=0.01,
                   max_p99_latency_ratio=1.5, p99_latency_slack_s=0.002)


def healthy(n: int = 200, errors: int = 0, p99: float = 0.010) -> VariantStats:
    return VariantStats(requests=n, errors=errors, p99_latency_s=p99, latency_samples=n - errors)


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


def test_healthy_canary_passes() -> None:
    v = step_verdict(SPEC, healthy(120, errors=1, p99=0.011), healthy(2000, errors=10, p99=0.010))
    assert v.outcome is Outcome.PASS, v.reasons


def test_no_traffic_is_inconclusive_never_a_pass() -> None:
    v = step_verdict(SPEC, VariantStats(), healthy())
    assert v.outcome is Outcome.INCONCLUSIVE
    assert any("no traffic" in r for r in v.reasons)
    both_empty = step_verdict(SPEC, VariantStats(), VariantStats())
    assert both_empty.outcome is Outcome.INCONCLUSIVE


def test_too_few_requests_is_inconclusive() -> None:
    v = step_verdict(SPEC, healthy(49), healthy())
    assert v.outcome is Outcome.INCONCLUSIVE
    assert "49 < minimum 50" in v.reasons[0]
    thin_stable = step_verdict(SPEC, healthy(), healthy(10))
    assert thin_stable.outcome is Outcome.INCONCLUSIVE


def test_error_rate_increase_fails() -> None:
    v = step_verdict(SPEC, healthy(200, errors=6), healthy(2000, errors=20))  # 3 % vs 1 %
    assert v.outcome is Outcome.FAIL
    assert "error rate" in v.reasons[0]
    at_limit = step_verdict(SPEC, healthy(200, errors=4), healthy(2000, errors=20))  # 2 % vs 1 %: +1 pp
    assert at_limit.outcome is Outcome.PASS


def test_clear_failure_is_reported_even_on_thin_data_but_one_error_is_not() -> None:
    broken = step_verdict(SPEC, VariantStats(requests=10, errors=10), healthy())
    assert broken.outcome is Outcome.FAIL
    one_error = step_verdict(SPEC, VariantStats(requests=3, errors=1, p99_latency_s=0.01), healthy())
    assert one_error.outcome is Outcome.INCONCLUSIVE


def test_latency_ratio_fails_beyond_ratio_plus_slack() -> None:
    slow = step_verdict(SPEC, healthy(p99=0.020), healthy(p99=0.010))  # limit 1.5*10+2 = 17 ms
    assert slow.outcome is Outcome.FAIL
    assert "p99" in slow.reasons[0]
    jitter = step_verdict(SPEC, healthy(p99=0.0025), healthy(p99=0.001))  # 2.5 ms < 1.5 + 2 ms
    assert jitter.outcome is Outcome.PASS


def test_missing_or_infinite_latency_is_inconclusive() -> None:
    no_p99 = step_verdict(SPEC, VariantStats(requests=100), healthy())
    assert no_p99.outcome is Outcome.INCONCLUSIVE
    inf = step_verdict(SPEC, healthy(p99=math.inf), healthy())
    assert inf.outcome is Outcome.INCONCLUSIVE


def test_next_action_limits_for_fail_and_inconclusive() -> None:
    spec = RolloutSpec(failure_limit=1, inconclusive_limit=2)
    assert next_action(spec, [Outcome.PASS]) is Action.ADVANCE
    assert next_action(spec, ["inconclusive"]) is Action.REPEAT
    assert next_action(spec, ["fail"]) is Action.REPEAT  # one failure tolerated
    assert next_action(spec, ["fail", "pass", "fail"]) is Action.ABORT_FAILED
    assert next_action(spec, ["inconclusive", "pass", "inconclusive"]) is Action.REPEAT
    assert next_action(spec, ["inconclusive"] * 3) is Action.ABORT_INCONCLUSIVE
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


def test_latency_is_not_compared_with_an_earlier_window() -> None:
    """At 100 % the stable numbers come from the previous window: a load change must not fail a healthy canary."""
    spec = RolloutSpec(min_requests=50, min_stable_requests=50)
    canary = VariantStats(requests=400, errors=0, p99_latency_s=0.0526)
    earlier_stable = VariantStats(requests=200, errors=0, p99_latency_s=0.0266)
    assert step_verdict(spec, canary, earlier_stable).outcome is Outcome.FAIL  # side by side it would be real
    verdict = step_verdict(spec, canary, earlier_stable, concurrent=False)
    assert verdict.outcome is Outcome.PASS
    assert any("latency not compared" in r for r in verdict.reasons)
    broken = VariantStats(requests=400, errors=40, p99_latency_s=0.02)
    assert step_verdict(spec, broken, earlier_stable, concurrent=False).outcome is Outcome.FAIL  # errors still count
