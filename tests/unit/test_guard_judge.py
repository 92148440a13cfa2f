"""The guard's judge on constructed observations: broken canaries fail, healthy ones never do, thin data is
inconclusive, and the false-alarm rate over repeated polls stays within its bound (by seeded simulation)."""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from mlcd.guard import (
    ACCURACY,
    CLASS_DISTRIBUTION,
    ERROR_RATE,
    LATENCY,
    GuardThresholds,
    GuardVerdict,
    VariantObservation,
    judge,
    latencies_from_histogram,
    look_alpha,
)
from mlcd.guard.judge import _corrected_alphas, _fisher_greater, _mann_whitney_greater
from mlcd.rollout.spec import Outcome

pytestmark = pytest.mark.unit

# MNIST's label shares: a healthy model's predicted classes follow them closely.
MNIST_SHARES = np.array([0.0987, 0.1124, 0.0993, 0.1022, 0.0974, 0.0904, 0.0986, 0.1044, 0.0975, 0.0991])
MNIST_SHARES = MNIST_SHARES / MNIST_SHARES.sum()


@dataclass
class Variant:
    """How one simulated variant behaves."""

    error_rate: float = 0.005
    median_latency_s: float = 0.004
    class_shares: np.ndarray = field(default_factory=lambda: MNIST_SHARES)
    accuracy: float = 0.99


class Simulator:
    """Cumulative gateway counters for one variant, as the guard sees them poll after poll."""

    def __init__(self, behaviour: Variant, rng: np.random.Generator, latency_window: int = 500):
        self.b = behaviour
        self.rng = rng
        self.requests = 0
        self.errors = 0
        self.classes = np.zeros(10, dtype=np.int64)
        self.correct = 0
        self.feedback = 0
        self.latencies: deque[float] = deque(maxlen=latency_window)  # the gateway keeps the last N

    def serve(self, n: int, feedback_share: float = 0.3) -> None:
        b, rng = self.b, self.rng
        errors = int(rng.binomial(n, b.error_rate))
        ok = n - errors
        self.requests += n
        self.errors += errors
        self.classes += rng.multinomial(ok, b.class_shares)
        # Latencies are log-normal (a right tail), as request latencies are.
        self.latencies.extend(rng.lognormal(math.log(b.median_latency_s), 0.35, ok).tolist())
        fb = int(rng.binomial(ok, feedback_share))
        self.feedback += fb
        self.correct += int(rng.binomial(fb, b.accuracy))

    def observe(self) -> VariantObservation:
        return VariantObservation(
            requests=self.requests,
            errors=self.errors,
            latencies_s=tuple(self.latencies),
            class_counts=tuple(int(v) for v in self.classes),
            feedback_correct=self.correct,
            feedback_total=self.feedback,
        )


def run_guard(
    canary: Variant,
    stable: Variant,
    *,
    polls: int,
    seed: int,
    rps: float = 50.0,
    canary_weight: float = 0.25,
    poll_s: float = 2.0,
    thresholds: GuardThresholds | None = None,
    spend: bool = True,
    latency_window: int = 500,
) -> list[GuardVerdict]:
    """Poll the judge ``polls`` times on cumulative counts of Poisson traffic split by weight."""
    rng = np.random.default_rng(seed)
    c, s = Simulator(canary, rng, latency_window), Simulator(stable, rng, latency_window)
    verdicts = []
    for look in range(1, polls + 1):
        total = int(rng.poisson(rps * poll_s))
        n_c = int(rng.binomial(total, canary_weight))
        c.serve(n_c)
        s.serve(total - n_c)
        verdicts.append(judge(c.observe(), s.observe(), thresholds, look=look if spend else None))
    return verdicts


def first_fail(verdicts: list[GuardVerdict]) -> int | None:
    return next((i + 1 for i, v in enumerate(verdicts) if v.outcome is Outcome.FAIL), None)


def stable_obs(rng: np.random.Generator, n: int = 2000) -> VariantObservation:
    sim = Simulator(Variant(), rng)
    sim.serve(n)
    return sim.observe()


# --- broken canaries fail, on the right check, quickly ------------------------------------------------------


def test_canary_that_always_predicts_one_class_fails_on_class_distribution() -> None:
    verdicts = run_guard(Variant(class_shares=np.eye(10)[3]), Variant(), polls=30, seed=1, canary_weight=0.05)
    at = first_fail(verdicts)
    # 5 % of 50 req/s is 2.5 req/s: the 50 predictions the check needs come after about 20 s (10 polls).
    assert at is not None and at <= 15, at
    v = verdicts[at - 1]
    assert [c.name for c in v.failed] == [CLASS_DISTRIBUTION]
    check = v.check(CLASS_DISTRIBUTION)
    assert check.effect is not None and check.effect > 0.8
    assert check.p_value is not None and check.alpha is not None and check.p_value <= check.alpha
    assert "top class 3 at 100%" in check.reason


def test_canary_with_20_percent_errors_fails_against_half_percent_stable() -> None:
    verdicts = run_guard(
        Variant(error_rate=0.20), Variant(error_rate=0.005), polls=30, seed=2, canary_weight=0.05
    )
    at = first_fail(verdicts)
    assert at is not None and at <= 15, at
    v = verdicts[at - 1]
    assert ERROR_RATE in [c.name for c in v.failed]
    check = v.check(ERROR_RATE)
    assert check.test == "fisher_exact_one_sided"
    assert check.counts["canary_errors"] > 0 and check.effect is not None and check.effect > 0.1
    assert v.outcome is Outcome.FAIL and v.summary.startswith("fail: error_rate: canary error rate")


def test_slower_canary_fails_latency() -> None:
    verdicts = run_guard(Variant(median_latency_s=0.008), Variant(median_latency_s=0.004), polls=20, seed=3)
    at = first_fail(verdicts)
    assert at is not None and at <= 5, at
    check = verdicts[at - 1].check(LATENCY)
    assert check.outcome is Outcome.FAIL
    assert check.effect is not None and check.effect > 1.5  # ratio of medians
    assert check.counts["prob_canary_slower"] > 0.7


def test_live_accuracy_drop_fails() -> None:
    # A model trained on shuffled labels: ordinary-looking class shares, 10 % accuracy.
    verdicts = run_guard(Variant(accuracy=0.10), Variant(accuracy=0.99), polls=20, seed=4)
    at = first_fail(verdicts)
    assert at is not None
    v = verdicts[at - 1]
    assert [c.name for c in v.failed] == [ACCURACY]
    z = v.check(ACCURACY).statistic  # the two-proportion z statistic, reported beside the exact p-value
    assert z is not None and z > 5


def test_moderate_accuracy_drop_fails_with_enough_feedback() -> None:
    rng = np.random.default_rng(5)
    stable = stable_obs(rng, 5000)
    canary = VariantObservation(requests=1000, feedback_correct=880, feedback_total=1000)
    check = judge(canary, stable, look=50).check(ACCURACY)
    assert check.outcome is Outcome.FAIL, check.reason


# --- healthy canaries never fail ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_healthy_canary_never_fails_over_200_polls(seed: int) -> None:
    # Two healthy but different models: the canary is 5 % slower, moves 1 % of predictions between classes and
    # is half a point less accurate. With thousands of requests some of that becomes "significant"; none of it
    # reaches the practical minimum, so the guard must not roll it back.
    shares = MNIST_SHARES.copy()
    shares[4] -= 0.01
    shares[9] += 0.01
    canary = Variant(error_rate=0.005, median_latency_s=0.0042, class_shares=shares, accuracy=0.985)
    verdicts = run_guard(canary, Variant(), polls=200, seed=seed)
    outcomes = [v.outcome for v in verdicts]
    assert Outcome.FAIL not in outcomes
    # Fail closed at first (thin data), then a pass once every required check has its samples.
    assert outcomes[0] is Outcome.INCONCLUSIVE
    assert outcomes[-1] is Outcome.PASS
    assert verdicts[-1].canary["requests"] > 4000


def test_equal_variants_at_low_traffic_stay_inconclusive_or_pass() -> None:
    verdicts = run_guard(Variant(), Variant(), polls=200, seed=20, rps=5.0, canary_weight=0.05)
    assert {v.outcome for v in verdicts} <= {Outcome.PASS, Outcome.INCONCLUSIVE}
    assert verdicts[5].outcome is Outcome.INCONCLUSIVE  # 12 s at 0.25 req/s: a few requests, never a pass


def test_alpha_spending_bounds_false_alarms_over_repeated_polls() -> None:
    """The family-wise bound, checked where it binds: no effect floor and a loose alpha of 0.05.

    Identical variants, 60 guard runs of 25 polls each. With alpha spent over looks the share of runs with any
    false failure must stay within the bound (0.05 → about 3 runs; allowing binomial noise, at most 8).
    Testing every poll at the full alpha instead (what a naive guard does) raises more false alarms: peeking.
    Measured with these seeds: 1 of 60 runs spent vs 23 of 60 naive; a longer run of the same simulation,
    200 runs of 100 polls, gave 4 (2 %, within the 5 % bound) vs 142 (71 %).
    """
    loose = GuardThresholds(
        alpha=0.05,
        min_error_rate_increase=0.0,
        min_latency_ratio=1.0,
        min_latency_increase_s=0.0,
        min_class_shift=0.0,
        min_accuracy_drop=0.0,
    )
    runs, polls = 60, 25
    spent = naive = 0
    for seed in range(runs):
        kw: dict[str, Any] = dict(
            polls=polls, seed=1000 + seed, thresholds=loose, latency_window=100, canary_weight=0.5
        )
        spent += first_fail(run_guard(Variant(), Variant(), spend=True, **kw)) is not None
        naive += first_fail(run_guard(Variant(), Variant(), spend=False, **kw)) is not None
    assert spent <= 8, f"{spent}/{runs} runs falsely failed with alpha spending (bound 5 %)"
    assert naive > spent, f"naive {naive} vs spent {spent}"


def test_look_alpha_sums_to_at_most_alpha() -> None:
    assert look_alpha(0.001, None) == 0.001
    assert look_alpha(0.001, 1) == pytest.approx(0.0005)
    assert sum(look_alpha(0.001, k) for k in range(1, 100_001)) < 0.001
    with pytest.raises(ValueError):
        look_alpha(0.001, 0)


# --- thin data, edge cases, and the shape of the evidence ---------------------------------------------------


def test_no_traffic_and_thin_data_are_inconclusive_never_pass() -> None:
    rng = np.random.default_rng(30)
    stable = stable_obs(rng)
    empty = judge(VariantObservation(), stable)
    assert empty.outcome is Outcome.INCONCLUSIVE
    assert all(c.outcome is Outcome.INCONCLUSIVE and c.p_value is None for c in empty.checks)
    assert "canary has 0 requests < 30 needed" in empty.summary

    thin = VariantObservation(requests=20, errors=0, latencies_s=(0.004,) * 20, class_counts=(2,) * 10)
    v = judge(thin, stable)
    assert v.outcome is Outcome.INCONCLUSIVE
    assert {c.name for c in v.checks if c.outcome is Outcome.INCONCLUSIVE} == {
        ERROR_RATE,
        LATENCY,
        CLASS_DISTRIBUTION,
        ACCURACY,
    }


def test_thin_but_clearly_broken_canary_still_not_failed_below_minimum() -> None:
    # Minimums guard against noise both ways: 10 requests with 10 errors are not yet judged …
    rng = np.random.default_rng(31)
    v = judge(VariantObservation(requests=10, errors=10), stable_obs(rng))
    assert v.outcome is Outcome.INCONCLUSIVE
    # … and with the minimum reached they fail at once.
    v = judge(VariantObservation(requests=30, errors=30), stable_obs(rng), look=3)
    assert v.outcome is Outcome.FAIL and v.failed[0].name == ERROR_RATE


def test_better_canary_passes() -> None:
    rng = np.random.default_rng(32)
    stable_sim = Simulator(Variant(error_rate=0.05, median_latency_s=0.008, accuracy=0.95), rng)
    canary_sim = Simulator(Variant(error_rate=0.0, median_latency_s=0.003, accuracy=0.995), rng)
    stable_sim.serve(3000)
    canary_sim.serve(1000)
    v = judge(canary_sim.observe(), stable_sim.observe(), look=10)
    assert v.outcome is Outcome.PASS, v.summary
    assert all(c.outcome is Outcome.PASS for c in v.checks)


def test_stable_without_traffic_uses_baseline_error_rate() -> None:
    # At 100 % canary (or in the bake period) stable sees nothing: errors still fail, but nothing passes.
    no_stable = VariantObservation()
    failing = judge(VariantObservation(requests=200, errors=40), no_stable, look=5)
    assert failing.outcome is Outcome.FAIL
    assert failing.check(ERROR_RATE).test == "binomial_one_sided_vs_baseline"
    healthy = judge(VariantObservation(requests=200, errors=1), no_stable, look=5)
    assert healthy.outcome is Outcome.INCONCLUSIVE
    assert (
        "no failure" in healthy.check(ERROR_RATE).reason
        and "no stable baseline" in healthy.check(ERROR_RATE).reason
    )


def test_required_checks_decide_pass() -> None:
    rng = np.random.default_rng(33)
    c, s = Simulator(Variant(), rng), Simulator(Variant(), rng)
    c.serve(500, feedback_share=0.0)
    s.serve(2000, feedback_share=0.0)
    assert judge(c.observe(), s.observe()).outcome is Outcome.PASS  # accuracy not required by default
    need_accuracy = GuardThresholds(required=(ERROR_RATE, LATENCY, CLASS_DISTRIBUTION, ACCURACY))
    assert judge(c.observe(), s.observe(), need_accuracy).outcome is Outcome.INCONCLUSIVE


def test_significant_but_small_latency_difference_passes() -> None:
    rng = np.random.default_rng(34)
    fast = rng.lognormal(math.log(0.0040), 0.2, 2000)
    slightly_slower = rng.lognormal(math.log(0.0044), 0.2, 2000)  # ×1.1: real but harmless
    c = VariantObservation(requests=2000, latencies_s=tuple(slightly_slower))
    s = VariantObservation(requests=2000, latencies_s=tuple(fast))
    check = judge(c, s).check(LATENCY)
    assert check.p_value is not None and check.p_value < 1e-10
    assert check.outcome is Outcome.PASS and "< minimum" in check.reason


def test_verdict_is_json_serialisable_with_every_number() -> None:
    rng = np.random.default_rng(35)
    canary = VariantObservation(
        requests=100,
        errors=30,
        latencies_s=(0.01,) * 50,
        class_counts=(100, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        feedback_correct=10,
        feedback_total=50,
    )
    stable = VariantObservation(
        requests=1000,
        errors=5,
        latencies_s=(0.0,) * 50,  # a zero median: the ratio is inf, written as null
        class_counts=tuple(int(v) for v in rng.multinomial(1000, MNIST_SHARES)),
        feedback_correct=300,
        feedback_total=300,
    )
    v = judge(canary, stable, look=7)
    data = json.loads(json.dumps(v.as_dict(), allow_nan=False))
    assert data["outcome"] == "fail" and data["look"] == 7
    assert {c["name"] for c in data["checks"]} == {ERROR_RATE, LATENCY, CLASS_DISTRIBUTION, ACCURACY}
    lat = next(c for c in data["checks"] if c["name"] == LATENCY)
    assert lat["effect"] is None and lat["outcome"] == "fail"
    for check in data["checks"]:
        assert set(check) >= {"outcome", "test", "statistic", "p_value", "alpha", "counts", "reason"}
        assert isinstance(check["p_value"], float)
    assert data["thresholds"]["alpha"] == 0.001 and data["canary"]["requests"] == 100


def test_holm_and_bonferroni_thresholds() -> None:
    # Holm: smallest p against alpha/3, next against alpha/2, then alpha; stop at the first acceptance.
    assert _corrected_alphas([0.001, None, 0.02, 0.04], 0.06, "holm") == [0.02, None, 0.03, 0.06]
    out = _corrected_alphas([0.001, 0.5, 0.02], 0.03, "holm")
    assert out[0] == pytest.approx(0.01) and out[2] == pytest.approx(0.015)
    # After 0.02 was accepted, nothing else is rejected.
    assert out[1] == pytest.approx(0.015) and out[1] is not None and 0.5 > out[1]
    assert _corrected_alphas([0.001, None, 0.02], 0.06, "bonferroni") == [0.03, None, 0.03]
    assert _corrected_alphas([None, None], 0.06, "holm") == [None, None]


def test_fast_statistics_match_scipy() -> None:
    from scipy.stats import fisher_exact, mannwhitneyu

    for a, n1, b, n2 in [
        (6, 30, 3, 570),
        (0, 10, 5, 100),
        (40, 200, 5, 1000),
        (3, 3, 0, 30),
        (5, 1000, 5, 1000),
    ]:
        p, _ = _fisher_greater(a, n1, b, n2)
        assert p == pytest.approx(
            fisher_exact([[a, n1 - a], [b, n2 - b]], alternative="greater").pvalue, rel=1e-9
        )
    rng = np.random.default_rng(36)
    x, y = np.round(rng.lognormal(0.1, 1, 300), 1), np.round(rng.lognormal(0, 1, 200), 1)  # rounded: ties
    u, p = _mann_whitney_greater(x, y)
    ref = mannwhitneyu(x, y, alternative="greater", method="asymptotic")
    assert u == ref.statistic and p == pytest.approx(ref.pvalue, rel=1e-9)


def test_bad_observations_are_refused() -> None:
    with pytest.raises(ValueError, match="exceed requests"):
        VariantObservation(requests=5, errors=6)
    with pytest.raises(ValueError, match=">= 0"):
        VariantObservation(requests=-1)
    with pytest.raises(ValueError, match="finite"):
        VariantObservation(requests=1, latencies_s=(float("nan"),))
    with pytest.raises(ValueError, match="feedback_correct"):
        VariantObservation(feedback_correct=3, feedback_total=2)
    with pytest.raises(ValueError, match="class counts"):
        VariantObservation(class_counts=(1, -1))


def test_thresholds_validate_and_round_trip() -> None:
    t = GuardThresholds(alpha=0.01, required=[ERROR_RATE])  # type: ignore[arg-type]
    assert GuardThresholds.from_dict(json.loads(json.dumps(t.as_dict()))) == t
    assert GuardThresholds.from_dict(None) == GuardThresholds()
    with pytest.raises(ValueError, match="unknown guard threshold keys"):
        GuardThresholds.from_dict({"alpah": 0.01})
    with pytest.raises(ValueError, match="unknown required checks"):
        GuardThresholds(required=("errors",))
    with pytest.raises(ValueError, match="alpha"):
        GuardThresholds(alpha=0.0)
    with pytest.raises(ValueError, match="correction"):
        GuardThresholds(correction="fdr")


def test_observation_from_gateway_counters() -> None:
    from mlcd.rollout.metrics import SeriesCounters

    # Cumulative buckets as the gateway exports them: 40 under 2 ms, 60 more under 5 ms, 5 above 5 s.
    series = SeriesCounters(
        requests=105,
        errors=2,
        latency_count=105,
        buckets={0.002: 40, 0.005: 100, 5.0: 100, math.inf: 105},
        classes={3: 50, 7: 45},
        feedback_correct=9,
        feedback_total=10,
    )
    obs = VariantObservation.from_series(series)
    assert obs.requests == 105 and obs.errors == 2
    assert obs.class_counts == (0, 0, 0, 50, 0, 0, 0, 45, 0, 0)
    assert sorted(obs.latencies_s) == [0.001] * 40 + [0.0035] * 60 + [5.0] * 5
    assert (obs.feedback_correct, obs.feedback_total) == (9, 10)
    # Bounded: a large histogram is scaled down keeping its shape.
    scaled = latencies_from_histogram({0.002: 4000, 0.005: 10000, math.inf: 10000}, max_samples=1000)
    assert len(scaled) == 1000 and scaled.count(0.001) == 400
    assert latencies_from_histogram({}) == [] and latencies_from_histogram({0.1: 0, math.inf: 0}) == []


def test_skipped_checks_are_neither_run_nor_required() -> None:
    """A bake period skips latency: a slower period under heavier load must not read as a slower model."""
    rng = np.random.default_rng(3)
    fast = VariantObservation(requests=400, errors=0, latencies_s=tuple(rng.normal(0.010, 0.001, 400)),
                              class_counts=(40,) * 10)
    slow = VariantObservation(requests=400, errors=0, latencies_s=tuple(rng.normal(0.030, 0.001, 400)),
                              class_counts=(40,) * 10)
    assert judge(slow, fast).outcome is Outcome.FAIL  # side by side, the slowdown is real evidence
    skipped = judge(slow, fast, skip=("latency",))
    assert skipped.outcome is not Outcome.FAIL
    assert all(c.name != "latency" for c in skipped.checks)
    with pytest.raises(ValueError, match="unknown checks"):
        judge(slow, fast, skip=("latencyy",))
