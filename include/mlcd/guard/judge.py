"""The guard's judge: is the canary worse than the stable variant? A pure function of two observations.

The judge compares what the gateway saw of each variant and answers ``pass``, ``fail`` or ``inconclusive``
(:class:`mlcd.rollout.spec.Outcome`, shared with the rollout so the two read one vocabulary). Four checks,
each one-sided ("canary worse than stable"), because a canary that is *better* must never be rolled back:

* **error rate**: Fisher's exact test on the 2×2 table (errors, successes) × (canary, stable). Exact, so the
  p-value is valid at any count, including the handful of requests a 5 % canary gets in its first seconds.
* **latency**: Mann-Whitney U (the Kayenta judge's test) on latency samples. It is rank based, so the heavy
  right tail of latencies and a few slow outliers do not dominate, and it needs no distributional assumption.
* **predicted-class distribution**: Pearson's chi-square test of homogeneity on the 2×K table of
  predicted-class counts. It needs no labels, so it catches a broken model (one that always answers the same
  class) at once. Stable's counts are a sample too, so the table form (not goodness-of-fit against stable's
  shares as if they were exact) keeps the test honest when the canary takes half the traffic or more. Classes
  too rare for the chi-square approximation (expected count below ``min_expected_count``) are pooled.
* **live accuracy**: a one-sided two-proportion comparison of feedback accuracy, decided by Fisher's exact
  test (the exact conditional two-proportion test: the normal z-test is anti-conservative when accuracies are
  near 1 and the wrong answers are few); the z statistic is reported for readers used to it.

Three safeguards keep a healthy canary from being rolled back on noise:

1. **Minimum samples.** A check with too little data is ``inconclusive``, never ``pass`` (fail closed).
2. **A minimum practical effect.** A check fails only when it is significant *and* the effect is large enough
   to matter (e.g. the canary's median latency at least 1.2× stable's and 1 ms more). With thousands of
   requests a 0.1 ms difference is "significant" but harmless; and asymptotic p-values (Mann-Whitney's normal
   approximation, chi-square) are least trustworthy far in the tail, where the effect floor still holds.
3. **False-alarm control across checks and across polls.** Within one poll, Holm's step-down procedure (or
   Bonferroni) over the checks that had enough data keeps the chance of any false failure at or below the
   poll's alpha. Across polls, the guard re-tests cumulative counts every few seconds: testing each poll at a
   fixed alpha would make a false alarm almost certain over a long bake period ("peeking"). The judge
   therefore *spends* alpha over looks: poll ``k`` (1-based) is tested at ``alpha / (k (k + 1))``. Since
   ``sum_k 1/(k (k + 1)) = 1``, the union bound gives P(any false failure in the whole guard run) ≤ ``alpha``,
   however many polls there are and whatever the correlation between them (cumulative counts make successive
   polls strongly correlated, so the real rate is far below the bound). The price is power on late polls,
   which the guard can afford: the failures it exists for (errors, a collapsed model, a 2× slowdown) give
   p-values many orders of magnitude below even poll 1000's threshold (``alpha`` · 1e-6). Pass ``look=None``
   for a single decision at the full alpha (one analysis window).

The default ``alpha`` is 0.001 for the whole guard run, so a healthy canary is rolled back by noise in at most
one run in a thousand, and in practice (safeguard 2) essentially never; ``tests/unit/test_guard_judge.py``
checks the bound by simulation. There, with no effect floor and alpha 0.05, 200 guard runs of 100 polls on
identical variants raised a false failure in 4 runs (2 %) with spending, and in 142 (71 %) when every poll was
tested at the full alpha. At 50 requests/s with a 5 % canary (2.5 requests/s) and a poll every 2 s, a canary
that always answers one class failed after 16–28 s, one with 20 % errors after 10–28 s, a 2× slower one after
8–16 s (20 seeded runs each).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from mlcd.rollout.spec import Outcome

NUM_CLASSES = 10

ERROR_RATE = "error_rate"
LATENCY = "latency"
CLASS_DISTRIBUTION = "class_distribution"
ACCURACY = "accuracy"
CHECKS: tuple[str, ...] = (ERROR_RATE, LATENCY, CLASS_DISTRIBUTION, ACCURACY)
CORRECTIONS = ("holm", "bonferroni")


@dataclass(frozen=True)
class GuardThresholds:
    """Every limit of the judge, with defaults that suit a 5 % canary at tens of requests per second.

    Attributes:
        alpha: family-wise false-alarm probability of a whole guard run (all checks, all polls; see the module
            docstring for how it is spent over polls).
        correction: ``"holm"`` (default, uniformly more powerful) or ``"bonferroni"`` across a poll's checks.
        min_requests: requests each variant needs before the error rates are compared.
        min_latency_samples: latency observations each variant needs.
        min_predictions: predicted classes each variant needs (about 5 per class, so chi-square is valid).
        min_feedback: feedback labels each variant needs.
        min_error_rate_increase: the canary's error rate must exceed stable's by at least this (absolute).
        min_latency_ratio: the canary's median latency must be at least this multiple of stable's …
        min_latency_increase_s: … and at least this many seconds above it (millisecond jitter never fails).
        min_class_shift: total variation distance between the two predicted-class distributions to fail.
        min_accuracy_drop: stable's live accuracy must exceed the canary's by at least this (absolute).
        min_expected_count: classes whose expected count under "same distribution" is below this are pooled
            (Cochran's rule for the chi-square approximation).
        baseline_error_rate: when stable has too few requests (the canary takes 100 %, or a bake period), the
            canary's errors are tested against this rate instead, so a failing canary still fails; such a
            check can fail but never pass.
        max_latency_samples: only the most recent this many latencies of each variant are used (bounded work).
        required: the checks that must all pass for an overall ``pass``. Accuracy is off by default because
            feedback labels may never come; when they do, a failed accuracy check still fails the verdict.
    """

    alpha: float = 0.001
    correction: str = "holm"
    min_requests: int = 30
    min_latency_samples: int = 30
    min_predictions: int = 50
    min_feedback: int = 30
    min_error_rate_increase: float = 0.02
    min_latency_ratio: float = 1.2
    min_latency_increase_s: float = 0.001
    min_class_shift: float = 0.1
    min_accuracy_drop: float = 0.03
    min_expected_count: float = 5.0
    baseline_error_rate: float = 0.01
    max_latency_samples: int = 2000
    required: tuple[str, ...] = (ERROR_RATE, LATENCY, CLASS_DISTRIBUTION)

    def __post_init__(self) -> None:
        object.__setattr__(self, "required", tuple(self.required))
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.correction not in CORRECTIONS:
            raise ValueError(f"correction must be one of {CORRECTIONS}, got {self.correction!r}")
        for name in (
            "min_requests",
            "min_latency_samples",
            "min_predictions",
            "min_feedback",
            "max_latency_samples",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1 (no data is never a pass)")
        for name in (
            "min_error_rate_increase",
            "min_latency_increase_s",
            "min_class_shift",
            "min_accuracy_drop",
            "min_expected_count",
        ):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0")
        if not self.min_latency_ratio >= 1:
            raise ValueError("min_latency_ratio must be >= 1")
        if not 0 <= self.baseline_error_rate < 1:
            raise ValueError("baseline_error_rate must be in [0, 1)")
        unknown = sorted(set(self.required) - set(CHECKS))
        if unknown:
            raise ValueError(f"unknown required checks: {', '.join(unknown)} (known: {', '.join(CHECKS)})")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["required"] = list(self.required)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> GuardThresholds:
        """Build from a mapping (a DAG param, the rollout spec); unknown keys are refused, not ignored."""
        if not data:
            return cls()
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown guard threshold keys: {', '.join(unknown)}")
        kwargs = dict(data)
        if "required" in kwargs:
            kwargs["required"] = tuple(kwargs["required"])
        return cls(**kwargs)


class _SeriesLike(Protocol):
    """What :meth:`VariantObservation.from_series` reads (``mlcd.rollout.metrics.SeriesCounters`` has it)."""

    # Read-only properties: a dataclass with plain ``dict`` fields satisfies them.
    @property
    def requests(self) -> float: ...
    @property
    def errors(self) -> float: ...
    @property
    def buckets(self) -> Mapping[float, float]: ...
    @property
    def classes(self) -> Mapping[int, float]: ...
    @property
    def feedback_correct(self) -> float: ...
    @property
    def feedback_total(self) -> float: ...


@dataclass(frozen=True)
class VariantObservation:
    """What the gateway saw of one variant since the guard started (cumulative counts).

    Attributes:
        requests: predict requests routed to the variant.
        errors: of those, requests the variant's model failed.
        latencies_s: a bounded sample of request latencies in seconds (e.g. the last N).
        class_counts: predicted-class counts, index = class (``NUM_CLASSES`` long; a mapping is accepted).
        feedback_correct: feedback labels that matched the variant's prediction.
        feedback_total: feedback labels received for the variant's predictions.
    """

    requests: int = 0
    errors: int = 0
    latencies_s: tuple[float, ...] = ()
    class_counts: tuple[int, ...] = ()
    feedback_correct: int = 0
    feedback_total: int = 0

    def __post_init__(self) -> None:
        for name in ("requests", "errors", "feedback_correct", "feedback_total"):
            value = getattr(self, name)
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"{name} must be a whole count, got {value}")
            object.__setattr__(self, name, int(value))
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.errors > self.requests:
            raise ValueError(f"errors ({self.errors}) exceed requests ({self.requests})")
        if self.feedback_correct > self.feedback_total:
            raise ValueError(
                f"feedback_correct ({self.feedback_correct}) exceeds feedback_total ({self.feedback_total})"
            )
        lat = np.asarray(self.latencies_s, dtype=np.float64).ravel()
        if lat.size and (not np.isfinite(lat).all() or (lat < 0).any()):
            raise ValueError("latencies_s must be finite and >= 0")
        object.__setattr__(self, "latencies_s", tuple(float(v) for v in lat))
        object.__setattr__(self, "class_counts", _as_counts(self.class_counts))

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def accuracy(self) -> float | None:
        return self.feedback_correct / self.feedback_total if self.feedback_total else None

    @property
    def predictions(self) -> int:
        return int(sum(self.class_counts))

    def summary(self) -> dict[str, Any]:
        """The counts that go into evidence (latencies summarised, not listed)."""
        lat = np.asarray(self.latencies_s)
        median, p99 = (float(v) for v in np.quantile(lat, [0.5, 0.99])) if lat.size else (None, None)
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "latency_samples": int(lat.size),
            "latency_median_s": median,
            "latency_p99_s": p99,
            "class_counts": list(self.class_counts),
            "feedback_correct": self.feedback_correct,
            "feedback_total": self.feedback_total,
            "accuracy": self.accuracy,
        }

    @classmethod
    def from_series(cls, series: _SeriesLike, max_latency_samples: int = 2000) -> VariantObservation:
        """Build from one variant's gateway counters (``mlcd.rollout.metrics.SeriesCounters``).

        The gateway exports latency as a histogram, so the latency sample is rebuilt from the buckets with
        :func:`latencies_from_histogram` (Mann-Whitney handles the resulting ties).
        """
        return cls(
            requests=int(round(series.requests)),
            errors=int(round(series.errors)),
            latencies_s=tuple(latencies_from_histogram(series.buckets, max_latency_samples)),
            class_counts=_as_counts({int(k): int(round(v)) for k, v in series.classes.items()}),
            feedback_correct=int(round(series.feedback_correct)),
            feedback_total=int(round(series.feedback_total)),
        )


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome with the numbers behind it.

    Attributes:
        name: one of :data:`CHECKS`.
        outcome: pass / fail / inconclusive.
        test: the statistical test used.
        statistic: the test statistic (``None`` when not computed).
        p_value: the one-sided p-value (``None`` when not computed).
        alpha: the corrected threshold the p-value was compared with (``None`` when not tested).
        effect: the observed effect (difference in rates, median ratio, total variation distance).
        min_effect: the practical effect needed to fail.
        counts: the numbers a person needs to check the arithmetic.
        reason: one line for the task log and the rollout record.
    """

    name: str
    outcome: Outcome
    test: str
    statistic: float | None
    p_value: float | None
    alpha: float | None
    effect: float | None
    min_effect: float
    counts: dict[str, Any]
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return _json_safe(
            {
                "name": self.name,
                "outcome": self.outcome.value,
                "test": self.test,
                "statistic": self.statistic,
                "p_value": self.p_value,
                "alpha": self.alpha,
                "effect": self.effect,
                "min_effect": self.min_effect,
                "counts": self.counts,
                "reason": self.reason,
            }
        )


@dataclass(frozen=True)
class GuardVerdict:
    """The judge's answer for one poll.

    Attributes:
        outcome: fail if any corrected check fails; pass if every required check passes; else inconclusive.
        checks: every check's result, in :data:`CHECKS` order.
        reasons: one line per failed check (on fail), per check short of pass (on inconclusive), or per check.
        alpha: the family-wise alpha of this poll (after spending over looks).
        look: the 1-based poll number the alpha was spent for (``None``: a single decision).
        thresholds: the thresholds used.
        canary: the canary's summarised counts.
        stable: the stable variant's summarised counts.
    """

    outcome: Outcome
    checks: tuple[CheckResult, ...]
    reasons: tuple[str, ...]
    alpha: float
    look: int | None
    thresholds: GuardThresholds = field(default_factory=GuardThresholds)
    canary: dict[str, Any] = field(default_factory=dict)
    stable: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        return tuple(c for c in self.checks if c.outcome is Outcome.FAIL)

    def check(self, name: str) -> CheckResult:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def summary(self) -> str:
        """One line: the outcome and its reasons."""
        return f"{self.outcome.value}: " + "; ".join(self.reasons)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON types only (non-finite floats become ``None``) for XCom, tags and rollout records."""
        return _json_safe(
            {
                "outcome": self.outcome.value,
                "summary": self.summary,
                "reasons": list(self.reasons),
                "alpha": self.alpha,
                "look": self.look,
                "checks": [c.as_dict() for c in self.checks],
                "thresholds": self.thresholds.as_dict(),
                "canary": self.canary,
                "stable": self.stable,
            }
        )


def look_alpha(alpha: float, look: int | None) -> float:
    """The family-wise alpha of poll ``look`` (1-based): ``alpha / (look (look + 1))``; ``alpha`` for None.

    The series sums to ``alpha`` over infinitely many polls, so the whole guard run's false-alarm probability
    stays at or below ``alpha`` (union bound) however long it polls.
    """
    if look is None:
        return alpha
    if look < 1:
        raise ValueError(f"look is 1-based, got {look}")
    return alpha / (look * (look + 1))


def judge(
    canary: VariantObservation,
    stable: VariantObservation,
    thresholds: GuardThresholds | None = None,
    *,
    look: int | None = None,
    skip: Collection[str] = (),
) -> GuardVerdict:
    """Compare the canary with the stable variant.

    Args:
        canary: the canary's cumulative observation.
        stable: the stable variant's cumulative observation over the same period.
        thresholds: limits; defaults to :class:`GuardThresholds`.
        look: the 1-based number of this poll within the guard run, for alpha spending; ``None`` judges
            a single analysis window at the full ``alpha``.
        skip: checks not to run (nor require), e.g. latency when the two observations were not taken side by
            side under the same load (a bake period compares with what the old champion served earlier).

    Returns:
        The verdict, with every check's statistic, p-value, counts and reason.
    """
    t = thresholds or GuardThresholds()
    family_alpha = look_alpha(t.alpha, look)
    runners = {ERROR_RATE: _error_rate, LATENCY: _latency, CLASS_DISTRIBUTION: _class_distribution, ACCURACY: _accuracy}
    unknown = sorted(set(skip) - set(runners))
    if unknown:
        raise ValueError(f"unknown checks to skip: {', '.join(unknown)}")
    raw = [run(canary, stable, t) for name, run in runners.items() if name not in skip]
    thresholds_for = _corrected_alphas([r.p_value for r in raw], family_alpha, t.correction)
    checks = tuple(_decide(r, a) for r, a in zip(raw, thresholds_for, strict=True))

    failed = [c for c in checks if c.outcome is Outcome.FAIL]
    short = [c for c in checks if c.name in t.required and c.name not in skip and c.outcome is not Outcome.PASS]
    if failed:
        outcome, reasons = Outcome.FAIL, tuple(f"{c.name}: {c.reason}" for c in failed)
    elif short:
        outcome, reasons = Outcome.INCONCLUSIVE, tuple(f"{c.name}: {c.reason}" for c in short)
    else:
        outcome, reasons = (
            Outcome.PASS,
            tuple(f"{c.name}: {c.reason}" for c in checks if c.p_value is not None),
        )
    return GuardVerdict(
        outcome=outcome,
        checks=checks,
        reasons=reasons,
        alpha=family_alpha,
        look=look,
        thresholds=t,
        canary=canary.summary(),
        stable=stable.summary(),
    )


def latencies_from_histogram(buckets: Mapping[float, float], max_samples: int = 2000) -> list[float]:
    """Rebuild a latency sample from cumulative Prometheus buckets (``le`` → count).

    Each bucket's observations are placed at the bucket's midpoint (the ``+Inf`` bucket at the top finite
    bound, an underestimate, so it can never invent a slowdown). With more than ``max_samples`` observations
    the counts are scaled down proportionally: the sample keeps the distribution's shape, and the smaller n
    only makes Mann-Whitney more cautious.
    """
    if not buckets:
        return []
    bounds = sorted(float(b) for b in buckets)
    cum = np.array([max(0.0, float(buckets[b])) for b in bounds])
    cum = np.maximum.accumulate(cum)  # a scrape racing an observation can leave a bucket one short
    counts = np.diff(np.concatenate([[0.0], cum]))
    total = counts.sum()
    if total <= 0:
        return []
    if total > max_samples:
        counts = counts * (max_samples / total)
    counts = np.floor(counts + 0.5).astype(np.int64)
    values: list[float] = []
    lower = 0.0
    for bound, n in zip(bounds, counts, strict=True):
        if math.isinf(bound):
            point = lower
        else:
            point = (lower + bound) / 2.0
            lower = bound
        values.extend([point] * int(n))
    return values


# --- the checks -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Raw:
    """A check before the multiple-testing correction: ``p_value is None`` means it was not tested."""

    name: str
    test: str
    statistic: float | None
    p_value: float | None
    effect: float | None
    min_effect: float
    big_enough: bool  # the effect reaches the practical minimum
    counts: dict[str, Any]
    detail: str  # the numbers, for the reason line
    thin: str | None = None  # why there is not enough data
    can_pass: bool = True  # False when only a fallback baseline was available


def _error_rate(c: VariantObservation, s: VariantObservation, t: GuardThresholds) -> _Raw:
    counts: dict[str, Any] = {
        "canary_requests": c.requests,
        "canary_errors": c.errors,
        "stable_requests": s.requests,
        "stable_errors": s.errors,
    }
    name, test = ERROR_RATE, "fisher_exact_one_sided"
    if c.requests < t.min_requests:
        return _Raw(
            name,
            test,
            None,
            None,
            None,
            t.min_error_rate_increase,
            False,
            counts,
            "",
            thin=f"canary has {c.requests} requests < {t.min_requests} needed",
        )
    c_rate = c.errors / c.requests
    if s.requests < t.min_requests:
        # No baseline to compare with: test against a configured ceiling, so a failing canary still fails
        # while the stable variant takes no traffic; such a check never passes.
        from scipy.stats import binomtest

        base = t.baseline_error_rate
        p = float(binomtest(c.errors, c.requests, base, alternative="greater").pvalue)
        effect = c_rate - base
        return _Raw(
            name,
            "binomial_one_sided_vs_baseline",
            float(c.errors),
            p,
            effect,
            t.min_error_rate_increase,
            effect >= t.min_error_rate_increase,
            {**counts, "baseline_error_rate": base},
            f"canary error rate {c_rate:.2%} ({c.errors}/{c.requests}) vs baseline {base:.2%} "
            f"(stable has {s.requests} requests < {t.min_requests})",
            can_pass=False,
        )
    p, stat = _fisher_greater(c.errors, c.requests, s.errors, s.requests)
    s_rate = s.errors / s.requests
    effect = c_rate - s_rate
    return _Raw(
        name,
        test,
        stat,
        p,
        effect,
        t.min_error_rate_increase,
        effect >= t.min_error_rate_increase,
        counts,
        f"canary error rate {c_rate:.2%} ({c.errors}/{c.requests}) vs stable {s_rate:.2%} "
        f"({s.errors}/{s.requests})",
    )


def _latency(c: VariantObservation, s: VariantObservation, t: GuardThresholds) -> _Raw:
    # The most recent samples: the caller appends in time order, and recent behaviour is what matters.
    x = np.asarray(c.latencies_s[-t.max_latency_samples :], dtype=np.float64)
    y = np.asarray(s.latencies_s[-t.max_latency_samples :], dtype=np.float64)
    counts: dict[str, Any] = {"canary_samples": int(x.size), "stable_samples": int(y.size)}
    name, test = LATENCY, "mann_whitney_u_one_sided"
    thin = [
        f"{who} has {n} latency samples < {t.min_latency_samples} needed"
        for who, n in (("canary", x.size), ("stable", y.size))
        if n < t.min_latency_samples
    ]
    if thin:
        return _Raw(
            name, test, None, None, None, t.min_latency_ratio, False, counts, "", thin="; ".join(thin)
        )
    u, p = _mann_whitney_greater(x, y)
    med_c, p99_c = (float(v) for v in np.quantile(x, [0.5, 0.99]))
    med_s, p99_s = (float(v) for v in np.quantile(y, [0.5, 0.99]))
    ratio = med_c / med_s if med_s > 0 else (math.inf if med_c > 0 else 1.0)
    big = ratio >= t.min_latency_ratio and med_c - med_s >= t.min_latency_increase_s
    counts.update(
        {
            "canary_median_s": med_c,
            "stable_median_s": med_s,
            "canary_p99_s": p99_c,
            "stable_p99_s": p99_s,
            "prob_canary_slower": u / (x.size * y.size),
        }
    )
    return _Raw(
        name,
        test,
        u,
        p,
        ratio,
        t.min_latency_ratio,
        big,
        counts,
        f"canary median {med_c * 1000:.2f} ms vs stable {med_s * 1000:.2f} ms (×{ratio:.2f})",
    )


def _class_distribution(c: VariantObservation, s: VariantObservation, t: GuardThresholds) -> _Raw:
    k = max(len(c.class_counts), len(s.class_counts), 1)
    cc = np.zeros(k, dtype=np.float64)
    sc = np.zeros(k, dtype=np.float64)
    cc[: len(c.class_counts)] = c.class_counts
    sc[: len(s.class_counts)] = s.class_counts
    n_c, n_s = float(cc.sum()), float(sc.sum())
    counts: dict[str, Any] = {"canary_predictions": int(n_c), "stable_predictions": int(n_s)}
    name, test = CLASS_DISTRIBUTION, "chi_square_homogeneity"
    thin = [
        f"{who} has {int(n)} predictions < {t.min_predictions} needed"
        for who, n in (("canary", n_c), ("stable", n_s))
        if n < t.min_predictions
    ]
    if thin:
        return _Raw(name, test, None, None, None, t.min_class_shift, False, counts, "", thin="; ".join(thin))
    pc, ps = cc / n_c, sc / n_s
    tvd = 0.5 * float(np.abs(pc - ps).sum())
    table = _pool_rare_columns(np.vstack([cc, sc]), t.min_expected_count)
    if table.shape[1] < 2:  # every prediction of both variants falls in one group: nothing differs
        stat, p, dof = 0.0, 1.0, 0
    else:
        stat, p, dof = _chi_square(table)
    top = int(np.argmax(pc))
    counts.update(
        {
            "canary_shares": [float(v) for v in pc],
            "stable_shares": [float(v) for v in ps],
            "groups_tested": int(table.shape[1]),
            "dof": dof,
        }
    )
    return _Raw(
        name,
        test,
        stat,
        p,
        tvd,
        t.min_class_shift,
        tvd >= t.min_class_shift,
        counts,
        f"predicted-class distance {tvd:.3f} (canary's top class {top} at {pc[top]:.0%} vs stable "
        f"{ps[top]:.0%})",
    )


def _accuracy(c: VariantObservation, s: VariantObservation, t: GuardThresholds) -> _Raw:
    counts: dict[str, Any] = {
        "canary_correct": c.feedback_correct,
        "canary_total": c.feedback_total,
        "stable_correct": s.feedback_correct,
        "stable_total": s.feedback_total,
    }
    name, test = ACCURACY, "two_proportion_one_sided_fisher_exact"
    thin = [
        f"{who} has {n} feedback labels < {t.min_feedback} needed"
        for who, n in (("canary", c.feedback_total), ("stable", s.feedback_total))
        if n < t.min_feedback
    ]
    if thin:
        return _Raw(
            name, test, None, None, None, t.min_accuracy_drop, False, counts, "", thin="; ".join(thin)
        )
    wrong_c, wrong_s = c.feedback_total - c.feedback_correct, s.feedback_total - s.feedback_correct
    p, _ = _fisher_greater(wrong_c, c.feedback_total, wrong_s, s.feedback_total)
    acc_c, acc_s = c.feedback_correct / c.feedback_total, s.feedback_correct / s.feedback_total
    pooled = (c.feedback_correct + s.feedback_correct) / (c.feedback_total + s.feedback_total)
    se = math.sqrt(pooled * (1 - pooled) * (1 / c.feedback_total + 1 / s.feedback_total))
    z = (acc_s - acc_c) / se if se > 0 else 0.0
    drop = acc_s - acc_c
    return _Raw(
        name,
        test,
        z,
        p,
        drop,
        t.min_accuracy_drop,
        drop >= t.min_accuracy_drop,
        counts,
        f"canary live accuracy {acc_c:.2%} ({c.feedback_correct}/{c.feedback_total}) vs stable "
        f"{acc_s:.2%} ({s.feedback_correct}/{s.feedback_total})",
    )


def _decide(r: _Raw, alpha: float | None) -> CheckResult:
    """Turn a raw check and its corrected threshold into an outcome and a reason line."""
    if r.p_value is None or alpha is None:
        outcome, reason = Outcome.INCONCLUSIVE, r.thin or "not tested"
    else:
        significant = r.p_value <= alpha
        stats = f"p={r.p_value:.3g} vs alpha {alpha:.2g}"
        if significant and r.big_enough:
            outcome, reason = (
                Outcome.FAIL,
                f"{r.detail}; canary worse ({stats}, effect {_fmt(r.effect)} ≥ {_fmt(r.min_effect)})",
            )
        elif not r.can_pass:
            outcome, reason = Outcome.INCONCLUSIVE, f"{r.detail}; no failure ({stats}) but no stable baseline"
        elif significant:
            outcome, reason = (
                Outcome.PASS,
                f"{r.detail}; significant ({stats}) but effect {_fmt(r.effect)} "
                f"< minimum {_fmt(r.min_effect)}",
            )
        else:
            outcome, reason = Outcome.PASS, f"{r.detail}; no evidence canary is worse ({stats})"
    return CheckResult(
        name=r.name,
        outcome=outcome,
        test=r.test,
        statistic=r.statistic,
        p_value=r.p_value,
        alpha=alpha if r.p_value is not None else None,
        effect=r.effect,
        min_effect=r.min_effect,
        counts=r.counts,
        reason=reason,
    )


def _corrected_alphas(p_values: Sequence[float | None], alpha: float, correction: str) -> list[float | None]:
    """The threshold each tested p-value is compared with, controlling the family-wise error at ``alpha``.

    Only checks with enough data count toward ``m``: an untested check cannot raise a false alarm. Holm's
    step-down: the i-th smallest p-value (0-based) is compared with ``alpha / (m - i)`` as long as every
    smaller one was rejected; after the first acceptance the rest are reported against the threshold that
    stopped the procedure, which their (larger) p-values exceed, so none is rejected, as Holm requires.
    """
    tested = [i for i, p in enumerate(p_values) if p is not None]
    m = len(tested)
    out: list[float | None] = [None] * len(p_values)
    if not m:
        return out
    if correction == "bonferroni":
        for i in tested:
            out[i] = alpha / m
        return out
    order = sorted(tested, key=lambda i: p_values[i])  # type: ignore[arg-type, return-value]
    stopped_at: float | None = None
    for rank, i in enumerate(order):
        level = alpha / (m - rank)
        if stopped_at is not None:
            out[i] = stopped_at
            continue
        out[i] = level
        if p_values[i] > level:  # type: ignore[operator]
            # Every later p-value is at least this one, hence above ``level``: none can be rejected.
            stopped_at = level
    return out


# --- statistics (small and vectorised: the guard calls these every few seconds) -----------------------------


def _fisher_greater(bad_c: int, n_c: int, bad_s: int, n_s: int) -> tuple[float, float]:
    """One-sided Fisher exact p-value that the canary's "bad" share exceeds stable's, and the odds ratio.

    Given the margins, the canary's bad count is hypergeometric under "same rate"; the p-value is
    P(X >= bad_c), summed term by term from log-gamma so tiny tail probabilities keep their precision (what
    ``scipy.stats.fisher_exact(..., alternative="greater")`` returns, at a tenth of the cost per poll).
    """
    from scipy.special import gammaln

    bad = bad_c + bad_s
    n = n_c + n_s
    good_c, good_s = n_c - bad_c, n_s - bad_s
    odds = (
        (bad_c * good_s) / (good_c * bad_s)
        if good_c * bad_s > 0
        else (math.inf if bad_c * good_s > 0 else 1.0)
    )
    if bad == 0 or bad_c == 0:
        return 1.0, odds  # no bad outcomes on the canary: no evidence it is worse
    k = np.arange(bad_c, min(bad, n_c) + 1, dtype=np.float64)
    # log C(bad, k) + log C(n - bad, n_c - k) - log C(n, n_c)
    log_pmf = (
        _log_comb(bad, k, gammaln)
        + _log_comb(n - bad, n_c - k, gammaln)
        - _log_comb(n, np.float64(n_c), gammaln)
    )
    p = float(np.exp(log_pmf).sum())
    return min(1.0, max(0.0, p)), odds


def _log_comb(n: float, k: Any, gammaln: Any) -> Any:
    return gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1)


def _mann_whitney_greater(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mann-Whitney U of ``x`` over ``y`` and the one-sided p-value that ``x`` tends to be larger.

    Normal approximation with the tie correction and a continuity correction (what scipy's ``asymptotic``
    method does), computed with one argsort: the guard runs it on every poll. Samples are at least
    ``min_latency_samples`` (30) each, where the approximation is good; the practical-effect floor covers its
    inaccuracy far in the tail.
    """
    from scipy.special import ndtr

    n1, n2 = x.size, y.size
    allv = np.concatenate([x, y])
    ranks, tie_term = _rank_with_ties(allv)
    u = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2.0)
    n = n1 + n2
    mu = n1 * n2 / 2.0
    var = n1 * n2 / 12.0 * ((n + 1) - tie_term / (n * (n - 1)))
    if var <= 0:  # every value identical: no evidence either way
        return u, 1.0
    z = (u - mu - 0.5) / math.sqrt(var)
    return u, float(ndtr(-z))


def _rank_with_ties(a: np.ndarray) -> tuple[np.ndarray, float]:
    """Average ranks (1-based) and the tie correction term ``sum(t^3 - t)`` over tie groups."""
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    starts = np.flatnonzero(np.concatenate([[True], sorted_a[1:] != sorted_a[:-1]]))
    sizes = np.diff(np.concatenate([starts, [a.size]]))
    avg = starts + (sizes + 1) / 2.0  # average 1-based rank of each tie group
    ranks = np.empty(a.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, sizes)
    return ranks, float((sizes.astype(np.float64) ** 3 - sizes).sum())


def _pool_rare_columns(table: np.ndarray, min_expected: float) -> np.ndarray:
    """Pool columns whose expected count (under homogeneity) is below ``min_expected`` in either row.

    Columns are pooled from the rarest up into one "other" column until it too reaches the minimum, so every
    cell of the tested table satisfies Cochran's rule; empty columns simply disappear.
    """
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] == 0:
        return table
    rows = table.sum(axis=1, keepdims=True)
    expected_min = (rows / table.sum() * table.sum(axis=0, keepdims=True)).min(axis=0)
    order = np.argsort(expected_min, kind="mergesort")
    rare = [int(i) for i in order if expected_min[i] < min_expected]
    if not rare:
        return table
    keep = [int(i) for i in order if expected_min[i] >= min_expected]
    other = table[:, rare].sum(axis=1)
    # The pooled column may itself be too small: absorb the next-rarest kept columns until it is not.
    while keep and (rows[:, 0] / table.sum() * other.sum()).min() < min_expected:
        other = other + table[:, keep.pop(0)]
    return np.column_stack([table[:, keep], other]) if keep else other[:, None]


def _chi_square(table: np.ndarray) -> tuple[float, float, int]:
    """Pearson's chi-square test of homogeneity on a 2×K table (no continuity correction: K is above 2)."""
    from scipy.special import chdtrc

    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    stat = float(((table - expected) ** 2 / expected).sum())
    dof = (table.shape[0] - 1) * (table.shape[1] - 1)
    return stat, float(chdtrc(dof, stat)), dof


# --- helpers ------------------------------------------------------------------------------------------------


def _as_counts(value: Sequence[int] | Mapping[int, int] | Iterable[int] | None) -> tuple[int, ...]:
    """Class counts as a tuple indexed by class; a mapping ``class → count`` fills ``NUM_CLASSES`` slots."""
    if value is None:
        return ()
    if isinstance(value, Mapping):
        if not value:
            return ()
        size = max(NUM_CLASSES, max(int(k) for k in value) + 1)
        out = [0] * size
        for k, v in value.items():
            if int(k) < 0:
                raise ValueError(f"class index must be >= 0, got {k}")
            out[int(k)] = int(v)
        value = out
    counts = tuple(int(v) for v in value)
    if any(v < 0 for v in counts):
        raise ValueError("class counts must be >= 0")
    return counts


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "inf"
    return f"{value:.3g}"


def _json_safe(obj: Any) -> Any:
    """Plain Python types for ``json.dumps``: numpy scalars unwrapped, NaN/inf become ``None``."""
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, Outcome):
        return obj.value
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj
