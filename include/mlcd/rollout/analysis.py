"""The analysis engine: is the canary worse than the stable variant? One sequential, always-valid test.

The guard, every canary step and ``mlcd watch`` feed this one engine (:class:`Analysis`) the gateway's counters
*per poll interval* (the difference of two scrapes) and get ``pass``, ``fail`` or ``inconclusive`` back
(:class:`mlcd.rollout.spec.Outcome`). Its state is a small JSON-able dict, so a deferred task or a trigger
carries it, and a restart neither resets nor double-spends the false-alarm budget.

**Compare like with like.** Every comparison uses canary and stable traffic served *in the same interval*:
each interval is its own stratum, so load that changes during a rollout (a CPU hog, twice the traffic at the
next weight) moves both sides of the comparison together. Under "the canary behaves like stable", which
variant served a request is independent of what happened to it, so within an interval an event (an error, a
latency above a bucket edge, a wrong answer, a predicted class) is the canary's with probability ``π``, the
canary's share of that interval's population (its share of predictions: the routing weight the gateway
reports, when it did not change within the interval). Intervals where stable served nothing carry no
comparison: latency is never judged then.

**Sequential, always valid.** Each check keeps a likelihood-ratio *test martingale* ``M`` (mSPRT: a mixture of
alternatives over a grid, or a predictable plug-in alternative) multiplied by each interval's likelihood
ratio. Under the null ``E[M] <= 1`` at every look, so by Ville's inequality ``P(sup_t M_t >= 1/a) <= a``: the
chance of *ever* failing a healthy canary, over a whole rollout and bake period and however many polls, stays
below the check's share ``a`` of ``alpha`` (Bonferroni over the checks). Alpha is spent by information, not by
poll count: a poll with no new events multiplies ``M`` by exactly 1. The reported p-value is the
anytime-valid ``min(1, 1/max_t M_t)``.

* **error rate**: the canary's share of the interval's errors. Null: canary error rate ``<=``
  ``error_rate_margin`` × stable's (a one-sided composite null, tested at its boundary, which is the least
  favourable point because the Bernoulli family has a monotone likelihood ratio). Conditioning on the
  interval's totals makes the canary's count hypergeometric; the binomial likelihood ratio is still a
  supermartingale by Hoeffding's (1963, thm. 4) convex-order bound.
* **latency**: exact counts above a bucket edge, no bucket midpoints: the edge is the gateway histogram's bound
  nearest stable's ``latency_quantile`` *in the intervals before* (chosen before the interval is seen, so the
  martingale stays valid). Null: the canary's share above the edge ``<=`` ``latency_margin`` × stable's.
* **predicted-class distribution** (label-free: catches a model that answers one class): a plug-in
  likelihood ratio of which variant predicted each class, the alternative being the class shares estimated
  from the intervals before (lightly smoothed). A one-class canary at 5 % of 50 requests/s is caught within seconds.
* **live accuracy** from feedback: the canary's share of wrong answers (null: ``accuracy_margin`` × stable's
  wrong rate).
* **after promotion** (the bake): the new champion is judged against the *holdback*, the previous champion kept
  on a small share (:attr:`mlcd.rollout.spec.RolloutSpec.holdback_pct`), by the same concurrent checks; and its
  error rate against all the control version's counts (``error_rate_vs_reference``: a two-sample test, since
  the reference is itself data, so a 10 % error spike is caught in seconds although the holdback is small).
* **versus reference, no control** (the holdback set to 0): what the version predicts, compared with what the
  old champion served minutes earlier, compares across time: users' inputs change by the hour, so these checks
  may *alert* (the bake ends ``unverified``) but never fail a verdict on their own.

A check fails only when its evidence is overwhelming (``M >= 1/a``) *and* the effect is large enough to matter
(e.g. canary p90 latency at least 1.2× stable's, interpolated as Prometheus' ``histogram_quantile`` does): with
thousands of requests a harmless difference can be "significant". A check passes when it has its minimum
samples and has not failed; fewer samples are inconclusive, never a pass. ``tests/unit/test_guard_judge.py``
drives the engine through the gateway's real histogram buckets and checks the false-failure bound by
simulation; ``bench/rollback.py`` measures time to rollback and false rollbacks.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from mlcd.rollout.metrics import SeriesCounters, histogram_quantile
from mlcd.rollout.spec import Outcome

NUM_CLASSES = 10

ERROR_RATE = "error_rate"
LATENCY = "latency"
CLASS_DISTRIBUTION = "class_distribution"
ACCURACY = "accuracy"
ERROR_VS_REFERENCE = "error_rate_vs_reference"
CLASSES_VS_REFERENCE = "class_distribution_vs_reference"
CHECKS: tuple[str, ...] = (ERROR_RATE, LATENCY, CLASS_DISTRIBUTION, ACCURACY)
# Every e-process gets an equal share of alpha (Bonferroni over a fixed family, decided before any data).
PROCESSES: tuple[str, ...] = (*CHECKS, ERROR_VS_REFERENCE, CLASSES_VS_REFERENCE)
# Alternatives of the mixture, as multiples of the null margin (equal prior weight each).
GRID: tuple[float, ...] = (1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 100.0)
# Reference predictions needed before the version-alone class check runs (its null is the reference's shares).
MIN_REFERENCE_PREDICTIONS = 300
# A version with at least this share of the traffic is also judged on its errors against all the control's counts.
MAJORITY_SHARE = 0.9
# ... unless the holdback's own errors are clearly above its past (a shared cause), and only once the evidence has
# held for this many looks in a row (time for the small holdback to show a shared cause).
PERSIST_LOOKS = 6
# Jeffreys prior of the two-sample tests' mixtures (the numerators of their e-processes).
BETA_PRIOR = 0.5
# A practical floor is a null on the parameter: a failure needs the effect's lower confidence bound above it, at
# this level (the sequential test's own guarantee does not depend on it: a failure needs both).
FLOOR_LEVEL = 0.05
FLOOR_Z = NormalDist().inv_cdf(1 - FLOOR_LEVEL)
# Pseudo-count per class of the canary's estimated class shares (the plug-in alternative).
CANARY_PRIOR = 0.1


@dataclass(frozen=True)
class GuardThresholds:
    """Every limit of the engine, with defaults that suit a 5 % canary at tens of requests per second.

    Attributes:
        alpha: probability of failing a healthy canary over the whole analysis (all checks, all polls).
        min_requests: canary requests (with concurrent stable traffic) before the error check can pass.
        min_latency_samples: latency observations of each variant before the latency check can pass.
        min_predictions: canary predictions before the class-distribution check can pass.
        min_feedback: feedback labels of each variant before the accuracy check can pass.
        error_rate_margin: null of the error check: canary error rate up to this multiple of stable's.
        min_error_rate_increase: … and a failure needs the canary's error rate this much above (absolute).
        latency_quantile: the latency edge is the bucket bound nearest this quantile of stable's latency.
        latency_margin: null of the latency check: the canary's share above the edge up to this multiple.
        min_latency_ratio: a failure needs the canary's interpolated latency quantile this multiple of stable's …
        min_latency_increase_s: … and this many seconds above it (millisecond jitter never fails).
        min_class_shift: total variation distance between the predicted-class distributions to fail.
        accuracy_margin: null of the accuracy check: canary wrong-answer rate up to this multiple of stable's.
        min_accuracy_drop: stable's live accuracy must exceed the canary's by at least this (absolute).
        baseline_error_rate: when the version serves alone with no reference yet, its errors are tested against
            this rate.
        required: the checks that must pass for an overall ``pass``. Accuracy is off by default because feedback
            labels may never come; when they do, a failed accuracy check still fails the verdict.
    """

    alpha: float = 0.001
    min_requests: int = 30
    min_latency_samples: int = 30
    min_predictions: int = 30
    min_feedback: int = 30
    error_rate_margin: float = 1.0
    # A null on the difference of rates ("increase <= 0.5 points"), rejected by its lower confidence bound: the
    # old 2-point cut on the noisy estimate hid a 1.5-point regression.
    min_error_rate_increase: float = 0.005
    latency_quantile: float = 0.9
    latency_margin: float = 2.0
    min_latency_ratio: float = 1.2
    min_latency_increase_s: float = 0.001
    min_class_shift: float = 0.05
    accuracy_margin: float = 1.0
    min_accuracy_drop: float = 0.02
    baseline_error_rate: float = 0.01
    required: tuple[str, ...] = (ERROR_RATE, LATENCY, CLASS_DISTRIBUTION)

    def __post_init__(self) -> None:
        object.__setattr__(self, "required", tuple(self.required))
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        for name in ("min_requests", "min_latency_samples", "min_predictions", "min_feedback"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1 (no data is never a pass)")
        for name in ("min_error_rate_increase", "min_latency_increase_s", "min_class_shift", "min_accuracy_drop"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("error_rate_margin", "latency_margin", "accuracy_margin", "min_latency_ratio"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"{name} must be >= 1")
        if not 0 < self.latency_quantile < 1:
            raise ValueError("latency_quantile must be in (0, 1)")
        if not 0 <= self.baseline_error_rate < 1:
            raise ValueError("baseline_error_rate must be in [0, 1)")
        unknown = sorted(set(self.required) - set(CHECKS))
        if unknown:
            raise ValueError(f"unknown required checks: {', '.join(unknown)} (known: {', '.join(CHECKS)})")

    @property
    def check_alpha(self) -> float:
        """Each e-process's share of ``alpha``."""
        return self.alpha / len(PROCESSES)

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


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome with the numbers behind it.

    Attributes:
        name: one of :data:`PROCESSES`.
        outcome: pass / fail / inconclusive.
        test: the sequential test used.
        statistic: ``log M``, the log of the check's test martingale now (``None`` when never updated).
        p_value: the anytime-valid p-value ``min(1, 1/max M)``.
        alpha: the check's share of alpha (``M >= 1/alpha`` is overwhelming evidence).
        effect: the observed effect (difference in rates, quantile ratio, total variation distance).
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
    alert: bool = False  # overwhelming evidence against the past only (no control): a person looks, nothing moves

    def as_dict(self) -> dict[str, Any]:
        return _json_safe({
            "name": self.name, "outcome": self.outcome.value, "test": self.test, "statistic": self.statistic,
            "p_value": self.p_value, "alpha": self.alpha, "effect": self.effect, "min_effect": self.min_effect,
            "counts": self.counts, "reason": self.reason, "alert": self.alert,
        })


@dataclass(frozen=True)
class GuardVerdict:
    """The engine's answer after a poll.

    Attributes:
        outcome: fail if any check fails; pass if every required check passes; else inconclusive.
        checks: every check's result.
        reasons: one line per failed check (on fail), per check short of pass (on inconclusive), or per check.
        alpha: the whole analysis' alpha.
        look: polls that brought new information so far.
        thresholds: the thresholds used.
        canary, stable: cumulative counts of the concurrent intervals (what was compared).
    """

    outcome: Outcome
    checks: tuple[CheckResult, ...]
    reasons: tuple[str, ...]
    alpha: float
    look: int | None
    thresholds: GuardThresholds = field(default_factory=GuardThresholds)
    canary: dict[str, Any] = field(default_factory=dict)
    stable: dict[str, Any] = field(default_factory=dict)
    alerts: tuple[str, ...] = ()  # checks with evidence against the past only, no control alongside: not a fail

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
        return _json_safe({
            "outcome": self.outcome.value, "summary": self.summary, "reasons": list(self.reasons),
            "alpha": self.alpha, "look": self.look, "checks": [c.as_dict() for c in self.checks],
            "thresholds": self.thresholds.as_dict(), "canary": self.canary, "stable": self.stable,
            "alerts": list(self.alerts),
        })


# --- the engine ----------------------------------------------------------------------------------------------


def _zero_state() -> dict[str, Any]:
    return {
        "looks": 0,
        "intervals": 0,
        "log_e": {name: None for name in PROCESSES},  # grid vector (list) or plug-in scalar (list of one)
        "max_log_e": {name: 0.0 for name in PROCESSES},
        "events": {name: 0 for name in PROCESSES},
        "canary": SeriesCounters().to_dict(),  # concurrent intervals only
        "stable": SeriesCounters().to_dict(),
        "alone": SeriesCounters().to_dict(),  # intervals where the version served without stable
        "reference": None,  # counters the version-alone checks compare with (default: ``stable``)
        # the version's counts while it carried (nearly) all traffic: the last step, the bake (two-sample errors)
        "majority": SeriesCounters().to_dict(),
        "majority_control": False,  # a control served alongside then: the error reference may fail a verdict
        "majority_stable": SeriesCounters().to_dict(),  # what the control served in those same intervals
        "bake_stable": SeriesCounters().to_dict(),  # what the holdback served in the bake
        "reference_run": 0,  # consecutive looks the error reference test would have failed
    }


class Analysis:
    """The sequential analysis of one version (see the module docstring). ``state`` is JSON-able.

    Args:
        thresholds: the limits.
        state: a state from :attr:`state` (a trigger or a deferred task carries it); ``None`` starts fresh.
        reference: counters the version is compared with when it serves alone and nothing concurrent was seen
            (e.g. what the old champion served before a bake period started).
    """

    def __init__(self, thresholds: GuardThresholds | None = None, state: Mapping[str, Any] | None = None,
                 reference: SeriesCounters | None = None) -> None:
        self.t = thresholds or GuardThresholds()
        self.state: dict[str, Any] = _copy(state) if state else _zero_state()
        if reference is not None and self.state.get("reference") is None:
            self.state["reference"] = reference.to_dict()

    # -- update ----------------------------------------------------------------------------------------------
    def update(self, canary: SeriesCounters, stable: SeriesCounters, weight: float | None = None,
               skip: Collection[str] = (), *, bake: bool = False) -> GuardVerdict:
        """Add one poll interval (the difference of two scrapes) and return the verdict so far.

        Args:
            canary: what the judged version served in the interval.
            stable: what the stable variant served in the same interval.
            weight: the canary's share of traffic (0–1) the gateway reported, when it did not change within the
                interval; ``None`` when it changed (the interval's observed prediction share is used).
            skip: checks not to update nor require (e.g. latency in a bake period).
            bake: the version is the promoted champion; ``stable`` is then the holdback (the previous champion on
                its small share), or empty when none is held back.

        While the version carries (nearly) all traffic (the bake, or an interval where its share is at least
        :data:`MAJORITY_SHARE`: the last step) the control's few requests cannot show an error spike quickly, so
        its errors are also compared with *all* the control version's counts (a two-sample test).
        """
        st = self.state
        for key, default in (("majority", SeriesCounters().to_dict()), ("majority_control", False),
                             ("majority_stable", SeriesCounters().to_dict()),
                             ("bake_stable", SeriesCounters().to_dict()), ("reference_run", 0)):
            st.setdefault(key, default)  # a state saved before the holdback existed
        st["intervals"] += 1
        before = self._events_total()
        share = weight if weight is not None else (
            canary.requests / (canary.requests + stable.requests) if canary.requests + stable.requests else 0.0)
        majority = bake or share >= MAJORITY_SHARE
        concurrent = stable.requests > 0 and canary.requests > 0
        if concurrent:
            c_tot, s_tot = _one(st["canary"]), _one(st["stable"])
            if ERROR_RATE not in skip:
                self._binary(ERROR_RATE, canary.errors, stable.errors, canary.requests, stable.requests,
                             self.t.error_rate_margin)
            if LATENCY not in skip:
                edge = _edge(s_tot.buckets, self.t.latency_quantile)
                if edge is not None:
                    self._binary(LATENCY, _above(canary.buckets, edge), _above(stable.buckets, edge),
                                 canary.latency_count, stable.latency_count, self.t.latency_margin)
            if CLASS_DISTRIBUTION not in skip:
                self._classes(canary.classes, stable.classes, c_tot.classes, s_tot.classes, weight)
            if ACCURACY not in skip:
                self._binary(ACCURACY, canary.feedback_total - canary.feedback_correct,
                             stable.feedback_total - stable.feedback_correct, canary.feedback_total,
                             stable.feedback_total, self.t.accuracy_margin)
            st["canary"] = (c_tot + canary).to_dict()
            st["stable"] = (s_tot + stable).to_dict()
            if majority:
                st["majority_control"] = True
                st["majority_stable"] = (_one(st["majority_stable"]) + stable).to_dict()
            if bake:
                st["bake_stable"] = (_one(st["bake_stable"]) + stable).to_dict()
        elif canary.requests > 0:
            ref = self._reference()
            alone = _one(st["alone"])
            if ERROR_RATE not in skip and ref is None:  # nothing to compare with but the configured baseline
                self._error_vs_reference(canary, ref)
            if CLASS_DISTRIBUTION not in skip and ref is not None:
                self._classes_vs_reference(canary.classes, alone.classes, ref.classes)
            st["alone"] = (alone + canary).to_dict()
        if majority and canary.requests > 0 and ERROR_RATE not in skip:
            st["majority"] = (_one(st["majority"]) + canary).to_dict()
            ref = self._reference()
            self._error_two_sample(_one(st["majority"]), ref)
            vec = st["log_e"][ERROR_VS_REFERENCE]
            would = ref is not None and vec is not None and _mixture(vec) >= math.log(1 / self.t.check_alpha) \
                and _error_alone_effect(_one(st["majority"]), ref, self.t)[2]
            st["reference_run"] = int(st["reference_run"]) + 1 if would else 0
        if self._events_total() > before:
            st["looks"] += 1
        return self.verdict(skip)

    def _events_total(self) -> int:
        return int(sum(self.state["events"].values()))

    def _reference(self) -> SeriesCounters | None:
        stable = _one(self.state["stable"])
        if stable.requests > 0:
            return stable
        ref = self.state.get("reference")
        return _one(ref) if ref else None

    def _bump(self, name: str, log_lr: np.ndarray, events: float) -> None:
        st = self.state
        prev = st["log_e"][name]
        cur = (np.asarray(prev, dtype=np.float64) if prev is not None else np.zeros_like(log_lr)) + log_lr
        st["log_e"][name] = [float(v) for v in cur]
        st["max_log_e"][name] = max(float(st["max_log_e"][name]), _mixture(cur))
        st["events"][name] = int(st["events"][name] + round(events))

    def _binary(self, name: str, a: float, b: float, n_a: float, n_b: float, margin: float) -> None:
        """Canary ``a`` and stable ``b`` events among ``n_a`` / ``n_b`` of this interval's population."""
        a, b = max(0.0, a), max(0.0, b)
        if a + b <= 0 or n_a <= 0 or n_b <= 0:
            return
        self._bump(name, binary_log_lr(a, b, n_a / (n_a + n_b), margin), a + b)

    def _classes(self, c: Mapping[int, float], s: Mapping[int, float], c_before: Mapping[int, float],
                 s_before: Mapping[int, float], weight: float | None) -> None:
        cc, sc = _vec(c), _vec(s)
        if cc.sum() <= 0 or sc.sum() <= 0:
            return
        pi = weight if weight is not None and 0 < weight < 1 else cc.sum() / (cc.sum() + sc.sum())
        self._bump(CLASS_DISTRIBUTION, np.array([classes_log_lr(cc, sc, _vec(c_before), _vec(s_before), pi)]),
                   cc.sum() + sc.sum())

    def _error_vs_reference(self, c: SeriesCounters, ref: SeriesCounters | None) -> None:
        base = self.t.baseline_error_rate
        if ref is not None and ref.requests >= self.t.min_requests:
            base = max(base, ref.errors / ref.requests)
        p0 = min(0.99, max(base * self.t.error_rate_margin, base + self.t.min_error_rate_increase))
        self._bump(ERROR_VS_REFERENCE, one_sample_log_lr(c.errors, c.requests, p0), c.requests)

    def _error_two_sample(self, c: SeriesCounters, ref: SeriesCounters | None) -> None:
        """The version's errors since promotion against all the control version's counts (both are data)."""
        if ref is None or ref.requests <= 0 or c.requests <= 0:
            return
        log_e = two_sample_log_e(c.errors, c.requests, ref.errors, ref.requests, self.t.error_rate_margin)
        st = self.state
        st["log_e"][ERROR_VS_REFERENCE] = [log_e]  # an e-process recomputed from the totals, not a product
        st["max_log_e"][ERROR_VS_REFERENCE] = max(float(st["max_log_e"][ERROR_VS_REFERENCE]), log_e)
        st["events"][ERROR_VS_REFERENCE] = int(c.errors + ref.errors)

    def _classes_vs_reference(self, c: Mapping[int, float], c_before: Mapping[int, float],
                              ref: Mapping[int, float]) -> None:
        """The version's predicted classes alone against the reference's: a two-sample test (both are data).

        The old one-sample test took the reference's sampled shares as the exact null, so its evidence grew with
        the number of predictions even for an identical model (P(sup M >= 20) was 0.28, not <= 0.05).
        """
        r = _vec(ref)
        total = _vec(c_before) + _vec(c)
        if r.sum() < MIN_REFERENCE_PREDICTIONS or _vec(c).sum() <= 0:
            return
        log_e = two_sample_classes_log_e(total, r)
        st = self.state
        st["log_e"][CLASSES_VS_REFERENCE] = [log_e]  # recomputed from the totals: an e-process, not a product
        st["max_log_e"][CLASSES_VS_REFERENCE] = max(float(st["max_log_e"][CLASSES_VS_REFERENCE]), log_e)
        st["events"][CLASSES_VS_REFERENCE] = int(st["events"][CLASSES_VS_REFERENCE] + _vec(c).sum())

    # -- verdict ---------------------------------------------------------------------------------------------
    def verdict(self, skip: Collection[str] = ()) -> GuardVerdict:
        st, t = self.state, self.t
        c, s, alone = _one(st["canary"]), _one(st["stable"]), _one(st["alone"])
        checks = [
            self._decide(ERROR_RATE, "msprt_error_share_stratified", *_error_effect(c, s, t),
                         enough=c.requests >= t.min_requests and s.requests >= 1,
                         thin=f"canary has {int(c.requests)} requests with concurrent stable < {t.min_requests}"),
            self._decide(LATENCY, "msprt_count_above_bucket_edge_stratified", *_latency_effect(c, s, t),
                         enough=min(c.latency_count, s.latency_count) >= t.min_latency_samples,
                         thin=f"{int(min(c.latency_count, s.latency_count))} concurrent latency samples < "
                              f"{t.min_latency_samples}"),
            self._decide(CLASS_DISTRIBUTION, "plugin_lr_class_share_stratified", *_class_effect(c, s, t),
                         enough=_vec(c.classes).sum() >= t.min_predictions and _vec(s.classes).sum() >= 1,
                         thin=f"canary has {int(_vec(c.classes).sum())} predictions with concurrent stable < "
                              f"{t.min_predictions}"),
            self._decide(ACCURACY, "msprt_wrong_share_stratified", *_accuracy_effect(c, s, t),
                         enough=min(c.feedback_total, s.feedback_total) >= t.min_feedback,
                         thin=f"{int(min(c.feedback_total, s.feedback_total))} feedback labels < {t.min_feedback}"),
        ]
        ref = self._reference()
        bake = _one(st.get("majority"))
        if bake.requests > 0 and ref is not None:
            # With a holdback the reference keeps growing with concurrent control data, and an error rate does not
            # move with what users send: it may fail. Without one it only compares across time: it alerts. A cause
            # both versions share (the network, a dependency) raises the holdback's errors above its own past too:
            # that vetoes it. And it must hold for PERSIST_LOOKS looks in a row, which gives the small holdback the
            # time to show a shared cause (a failure needs more, never less, than the e-process alone).
            ctrl = _one(st.get("bake_stable"))
            past_n, past_e = ref.requests - ctrl.requests, max(0.0, ref.errors - ctrl.errors)
            vetoed = _shared_cause(ctrl.errors, ctrl.requests, past_e, past_n)
            run = int(st.get("reference_run", 0))
            effect = _error_alone_effect(bake, ref, t)
            note = (f"; the holdback errs more than before too ({int(ctrl.errors)}/{int(ctrl.requests)}): a shared "
                    "cause, not this version" if vetoed else
                    f"; held {run} of {PERSIST_LOOKS} looks" if effect[2] and run < PERSIST_LOOKS else "")
            effect = (*effect[:2], effect[2] and run >= PERSIST_LOOKS and not vetoed, effect[3] + note,
                      {**effect[4], "holdback_errors": int(ctrl.errors), "holdback_requests": int(ctrl.requests),
                       "looks_held": run})
            checks.append(self._decide(ERROR_VS_REFERENCE, "universal_inference_two_sample_error_rate",
                                       *effect, enough=bake.requests >= t.min_requests,
                                       thin=f"version has {int(bake.requests)} requests with the majority of "
                                            f"traffic < {t.min_requests}",
                                       alert_only=not st.get("majority_control")))
        elif alone.requests > 0:
            checks.append(self._decide(ERROR_VS_REFERENCE, "msprt_one_sample_error_rate",
                                       *_error_alone_effect(alone, ref, t), enough=alone.requests >= t.min_requests,
                                       thin=f"version alone has {int(alone.requests)} requests < {t.min_requests}",
                                       alert_only=True))
        if alone.requests > 0 and ref is not None:
            checks.append(self._decide(CLASSES_VS_REFERENCE, "universal_inference_two_sample_classes",
                                       *_class_effect(alone, ref, t),
                                       enough=_vec(alone.classes).sum() >= t.min_predictions,
                                       thin=f"version alone has {int(_vec(alone.classes).sum())} predictions",
                                       alert_only=True))
        checks = [ch for ch in checks if ch.name not in skip]
        failed = [ch for ch in checks if ch.outcome is Outcome.FAIL]
        required = set(t.required)
        if c.feedback_total > 0 and s.feedback_total > 0:
            required.add(ACCURACY)  # feedback arrives: the live accuracy must be shown, not only not failed
        short = [ch for ch in checks if ch.name in required and ch.outcome is not Outcome.PASS]
        if failed:
            outcome, reasons = Outcome.FAIL, tuple(f"{ch.name}: {ch.reason}" for ch in failed)
        elif short:
            outcome, reasons = Outcome.INCONCLUSIVE, tuple(f"{ch.name}: {ch.reason}" for ch in short)
        else:
            outcome, reasons = Outcome.PASS, tuple(f"{ch.name}: {ch.reason}" for ch in checks
                                                   if ch.statistic is not None)
        alerts = tuple(ch.name for ch in checks if ch.alert)
        return GuardVerdict(outcome, tuple(checks), reasons or ("no check had data",), t.alpha, st["looks"], t,
                            _summary(c), _summary(s), alerts)

    def _decide(self, name: str, test: str, effect: float | None, min_effect: float, big: bool, detail: str,
                counts: dict[str, Any], *, enough: bool, thin: str, alert_only: bool = False) -> CheckResult:
        st, a = self.state, self.t.check_alpha
        vec = st["log_e"][name]
        log_e = _mixture(np.asarray(vec)) if vec is not None else None
        p = min(1.0, math.exp(-float(st["max_log_e"][name])))
        threshold = math.log(1.0 / a)
        counts = {**counts, "events_tested": st["events"][name]}
        if log_e is not None and log_e >= threshold and big and alert_only:
            # Evidence against the past, with no control serving alongside: an alert a person reads, not a verdict.
            return CheckResult(name, Outcome.INCONCLUSIVE, test, log_e, p, a, effect, min_effect, counts,
                               f"{detail}; ALERT: differs from what the previous version served earlier (anytime "
                               f"p={p:.3g}); compared across time, with no control: never a rollback on its own",
                               alert=True)
        if log_e is not None and log_e >= threshold and big:
            outcome = Outcome.FAIL
            reason = f"{detail}; canary worse (anytime p={p:.3g} <= {a:.2g}, effect {_fmt(effect)} >= " \
                     f"{_fmt(min_effect)})"
        elif not enough:
            outcome, reason = Outcome.INCONCLUSIVE, thin
        elif log_e is not None and log_e >= threshold:
            outcome = Outcome.PASS
            reason = f"{detail}; significant (p={p:.3g}) but effect {_fmt(effect)} < minimum {_fmt(min_effect)}"
        else:
            outcome, reason = Outcome.PASS, f"{detail}; no evidence the canary is worse (anytime p={p:.3g})"
        return CheckResult(name, outcome, test, log_e, p, a, effect, min_effect, counts, reason)


# --- the sequential statistics -------------------------------------------------------------------------------


def binary_log_lr(a: float, b: float, pi: float, margin: float, grid: tuple[float, ...] = GRID) -> np.ndarray:
    """Log likelihood ratios, one per alternative, of ``a`` canary and ``b`` stable events in one interval.

    Under the null, an event is the canary's with probability ``p0 = m π / (m π + 1 - π)`` (the canary's event
    rate ``m`` × stable's, ``m`` the margin); alternative ``g`` uses ``m g`` instead. The sum of these over
    intervals, mixed with equal weights, is the mSPRT statistic.
    """
    if not 0 < pi < 1:
        return np.zeros(len(grid))
    p0 = margin * pi / (margin * pi + 1 - pi)
    r = margin * np.asarray(grid, dtype=np.float64)
    p1 = r * pi / (r * pi + 1 - pi)
    return a * np.log(p1 / p0) + b * np.log((1 - p1) / (1 - p0))


def classes_log_lr(c: np.ndarray, s: np.ndarray, c_before: np.ndarray, s_before: np.ndarray, pi: float) -> float:
    """Log likelihood ratio of which variant predicted each class in one interval (plug-in alternative).

    Null: a prediction of class k is the canary's with probability ``π``. Alternative: ``π r_k / (π r_k + 1 - π)``
    with ``r_k`` the ratio of the canary's to stable's class-k share estimated from the intervals *before* this
    one (add-half smoothing), so the alternative is fixed before the data it is tested on (a valid martingale).
    """
    if not 0 < pi < 1:
        return 0.0
    k = max(c.size, s.size)
    # A light prior on the canary (0.1 per class) lets a few of its predictions shape the alternative, which is
    # what catches a one-class model at a few requests per second; validity does not depend on the prior.
    shares_c = (_pad(c_before, k) + CANARY_PRIOR) / (_pad(c_before, k).sum() + CANARY_PRIOR * k)
    shares_s = (_pad(s_before, k) + 0.5) / (_pad(s_before, k).sum() + 0.5 * k)
    r = shares_c / shares_s
    q = pi * r / (pi * r + 1 - pi)
    return float((_pad(c, k) * np.log(q / pi) + _pad(s, k) * np.log((1 - q) / (1 - pi))).sum())


def one_sample_log_lr(errors: float, n: float, p0: float, grid: tuple[float, ...] = GRID) -> np.ndarray:
    """Log likelihood ratios of ``errors`` in ``n`` Bernoulli trials: rate ``p1`` against the null ``p0``.

    The alternatives grow multiplicatively from the null (``p0 g``, capped below 1), so 4× and 20× the null rate
    both have an alternative nearby (the old ``1 - (1 - p0)/g`` started near 35 % and missed a 10 % spike).
    """
    if n <= 0:
        return np.zeros(len(grid))
    p1 = p0 * np.asarray(grid, dtype=np.float64)
    p1 = np.clip(p1, p0 + 1e-9, 1 - 1e-9)
    return errors * np.log(p1 / p0) + (n - errors) * np.log((1 - p1) / (1 - p0))


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _bernoulli_ll(k: float, n: float, p: float) -> float:
    """Log likelihood of one sequence with ``k`` events in ``n`` trials at rate ``p`` (``0 log 0 = 0``)."""
    out = 0.0
    if k > 0:
        out += k * math.log(p) if p > 0 else -math.inf
    if n - k > 0:
        out += (n - k) * math.log1p(-p) if p < 1 else -math.inf
    return out


def two_sample_log_e(k: float, n: float, k_ref: float, n_ref: float, margin: float = 1.0,
                     prior: float = BETA_PRIOR) -> float:
    """Log e-value of "rate ``k/n`` is above ``margin`` × the reference's rate", both samples being data.

    Universal inference (Wasserman, Ramdas & Balakrishnan 2020): the numerator is the marginal likelihood of both
    sequences under independent Beta(``prior``, ``prior``) rates (a predictive, so arrival order does not matter);
    the denominator is the likelihood maximised over the whole null ``p <= margin p_ref``. Dividing by the null's
    maximum instead of its true value only shrinks the ratio, which is a test martingale under the true value: the
    recomputed ratio is an e-process, valid at every look (Ville), whatever the reference's size.
    """
    k, n, k_ref, n_ref = (max(0.0, float(v)) for v in (k, n, k_ref, n_ref))
    if n <= 0 or n_ref <= 0:
        return 0.0
    a = prior
    numerator = (_log_beta(k + a, n - k + a) - _log_beta(a, a)) + (_log_beta(k_ref + a, n_ref - k_ref + a)
                                                                  - _log_beta(a, a))
    p, p_ref = k / n, k_ref / n_ref
    if p <= margin * p_ref:
        best = _bernoulli_ll(k, n, p) + _bernoulli_ll(k_ref, n_ref, p_ref)
    else:
        # The constrained maximum lies on the boundary p = margin·p_ref (the log likelihood is concave).
        def f(q: float) -> float:
            return _bernoulli_ll(k, n, margin * q) + _bernoulli_ll(k_ref, n_ref, q)

        lo, hi = 1e-12, min(1.0, 1.0 / margin) - 1e-12
        for _ in range(100):
            m1, m2 = lo + (hi - lo) / 3, hi - (hi - lo) / 3
            if f(m1) < f(m2):
                lo = m1
            else:
                hi = m2
        best = max(f((lo + hi) / 2), f(1e-12), f(min(1.0, 1.0 / margin) - 1e-12))
    return float(numerator - best)


def _log_dirichlet_multinomial(counts: np.ndarray, prior: float) -> float:
    """Log marginal likelihood of one sequence with these class counts under a symmetric Dirichlet prior."""
    k, n = counts.size, float(counts.sum())
    return float(math.lgamma(k * prior) - math.lgamma(k * prior + n)
                 + sum(math.lgamma(prior + float(x)) - math.lgamma(prior) for x in counts))


def two_sample_classes_log_e(counts: np.ndarray, ref: np.ndarray, prior: float = BETA_PRIOR) -> float:
    """Log e-value of "these predicted classes follow another distribution than the reference's" (both data).

    Universal inference as in :func:`two_sample_log_e`: each sample's Dirichlet-multinomial marginal likelihood
    over the likelihood of both at their pooled shares (the null's maximum). The number of classes is read
    from the data (the highest class either sample predicted), not assumed.
    """
    c, r = np.asarray(counts, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    k = max(c.size, r.size)
    c, r = _pad(c, k), _pad(r, k)
    seen = np.nonzero((c + r) > 0)[0]
    if c.sum() <= 0 or r.sum() <= 0 or seen.size == 0:
        return 0.0
    k = int(seen[-1]) + 1
    c, r = c[:k], r[:k]
    pooled = (c + r) / (c.sum() + r.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        best = float(np.where(c + r > 0, (c + r) * np.log(np.where(pooled > 0, pooled, 1.0)), 0.0).sum())
    return _log_dirichlet_multinomial(c, prior) + _log_dirichlet_multinomial(r, prior) - best


def _mixture(log_e: Any) -> float:
    """``log(mean(exp(log_e)))`` without overflow."""
    values = [float(v) for v in log_e]
    if not values:
        return 0.0
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values) / len(values))


# --- effects (the practical floors) --------------------------------------------------------------------------


def _error_effect(c: SeriesCounters, s: SeriesCounters, t: GuardThresholds
                  ) -> tuple[float | None, float, bool, str, dict[str, Any]]:
    counts: dict[str, Any] = {"canary_requests": int(c.requests), "canary_errors": int(c.errors),
              "stable_requests": int(s.requests), "stable_errors": int(s.errors)}
    if c.requests <= 0 or s.requests <= 0:
        return None, t.min_error_rate_increase, False, "no concurrent requests", counts
    rc, rs = c.errors / c.requests, s.errors / s.requests
    effect = rc - rs
    low = effect - FLOOR_Z * math.sqrt(_var(rc, c.requests) + _var(rs, s.requests))
    counts["increase_lower_bound"] = low
    return (effect, t.min_error_rate_increase, _clears(low, effect, t.min_error_rate_increase),
            f"canary error rate {rc:.2%} ({int(c.errors)}/{int(c.requests)}) vs stable {rs:.2%} "
            f"({int(s.errors)}/{int(s.requests)}, increase at least {low:.4f})", counts)


def _clears(low: float, effect: float, floor: float) -> bool:
    """The floor's null ("effect <= floor") is rejected: the lower bound clears it (a floor of 0: any increase)."""
    return low > floor or (floor == 0 and effect > 0)


def _error_alone_effect(c: SeriesCounters, ref: SeriesCounters | None, t: GuardThresholds
                        ) -> tuple[float | None, float, bool, str, dict[str, Any]]:
    base = t.baseline_error_rate
    if ref is not None and ref.requests >= t.min_requests:
        base = ref.errors / ref.requests
    rc = c.errors / c.requests if c.requests else 0.0
    effect = rc - base
    n_ref = ref.requests if ref is not None and ref.requests >= t.min_requests else math.inf
    low = effect - FLOOR_Z * math.sqrt(_var(rc, max(c.requests, 1.0)) + (_var(base, n_ref) if n_ref < math.inf
                                                                           else 0.0))
    return (effect, t.min_error_rate_increase, _clears(low, effect, t.min_error_rate_increase),
            f"version error rate {rc:.2%} ({int(c.errors)}/{int(c.requests)}) vs reference {base:.2%}",
            {"requests": int(c.requests), "errors": int(c.errors), "reference_error_rate": base,
             "reference_requests": int(ref.requests) if ref is not None else 0})


def _shared_cause(k: float, n: float, k_past: float, n_past: float) -> bool:
    """The holdback errs clearly more now than it did before: its rate's lower bound above its past rate's upper
    bound (one-sided, each at FLOOR_LEVEL). Only ever stops a failure, so it needs no guarantee of its own."""
    if n <= 0 or n_past <= 0:
        return False
    p, p_past = k / n, k_past / n_past
    return p - FLOOR_Z * math.sqrt(_var(p, n)) > p_past + FLOOR_Z * math.sqrt(_var(p_past, n_past))


def _latency_effect(c: SeriesCounters, s: SeriesCounters, t: GuardThresholds
                    ) -> tuple[float | None, float, bool, str, dict[str, Any]]:
    q = t.latency_quantile
    qc = histogram_quantile(q, c.buckets) if c.latency_count > 0 else None
    qs = histogram_quantile(q, s.buckets) if s.latency_count > 0 else None
    counts = {"canary_samples": int(c.latency_count), "stable_samples": int(s.latency_count),
              f"canary_p{int(q * 100)}_s": qc, f"stable_p{int(q * 100)}_s": qs,
              "edge_s": _edge(s.buckets, q)}
    if qc is None or qs is None or not (math.isfinite(qc) and math.isfinite(qs)):
        return None, t.min_latency_ratio, False, "no comparable latency quantiles", counts
    ratio = qc / qs if qs > 0 else (math.inf if qc > 0 else 1.0)
    big = ratio >= t.min_latency_ratio and qc - qs >= t.min_latency_increase_s
    return (ratio, t.min_latency_ratio, big,
            f"canary p{int(q * 100)} {qc * 1000:.2f} ms vs stable {qs * 1000:.2f} ms (×{ratio:.2f}, "
            "interpolated like histogram_quantile)", counts)


def _class_effect(c: SeriesCounters, s: SeriesCounters, t: GuardThresholds
                  ) -> tuple[float | None, float, bool, str, dict[str, Any]]:
    cc, sc = _vec(c.classes), _vec(s.classes)
    counts: dict[str, Any] = {"canary_predictions": int(cc.sum()), "stable_predictions": int(sc.sum())}
    if cc.sum() <= 0 or sc.sum() <= 0:
        return None, t.min_class_shift, False, "no concurrent predictions", counts
    pc, ps = cc / cc.sum(), sc / sc.sum()
    tvd = 0.5 * float(np.abs(pc - ps).sum())
    low = tv_lower_bound(cc, sc)
    top = int(np.argmax(pc))
    counts.update({"canary_shares": [float(v) for v in pc], "stable_shares": [float(v) for v in ps],
                   "distance_lower_bound": low})
    # The floor is a null on the parameter ("distance <= min_class_shift"), rejected only when the distance's
    # lower confidence bound clears it: the plain estimate is biased upwards (by ~0.1 with a few hundred
    # predictions on one side), so a cut on it failed good models on small samples.
    return (tvd, t.min_class_shift, low > t.min_class_shift or (t.min_class_shift == 0 and tvd > 0),
            f"predicted-class distance {tvd:.3f}, at least {low:.3f} (canary's top class {top} at {pc[top]:.0%} "
            f"vs {ps[top]:.0%})", counts)


def _accuracy_effect(c: SeriesCounters, s: SeriesCounters, t: GuardThresholds
                     ) -> tuple[float | None, float, bool, str, dict[str, Any]]:
    counts: dict[str, Any] = {"canary_correct": int(c.feedback_correct), "canary_total": int(c.feedback_total),
              "stable_correct": int(s.feedback_correct), "stable_total": int(s.feedback_total)}
    if c.feedback_total <= 0 or s.feedback_total <= 0:
        return None, t.min_accuracy_drop, False, "no concurrent feedback", counts
    ac, as_ = c.feedback_correct / c.feedback_total, s.feedback_correct / s.feedback_total
    drop = as_ - ac
    # The floor as a null on the parameter ("drop <= min_accuracy_drop"): its lower confidence bound must clear it.
    low = drop - FLOOR_Z * math.sqrt(_var(ac, c.feedback_total) + _var(as_, s.feedback_total))
    counts["drop_lower_bound"] = low
    return (drop, t.min_accuracy_drop, _clears(low, drop, t.min_accuracy_drop),
            f"canary live accuracy {ac:.2%} ({int(c.feedback_correct)}/{int(c.feedback_total)}) vs stable {as_:.2%}"
            f" (drop at least {low:.3f})", counts)


def _var(p: float, n: float) -> float:
    """Variance of a share's estimate, with a quarter-count floor so 0 % or 100 % of a few is not certain."""
    return (p * (1 - p) + 0.25 / n) / n


def tv_lower_bound(c: np.ndarray, s: np.ndarray, z: float | None = None) -> float:
    """A lower confidence bound on the total variation distance of two class distributions (counts).

    Each class's difference of shares shrinks by its simultaneous normal interval's half width (Bonferroni over
    the classes, read from the data), and the shrunk differences are summed: a difference the data cannot
    tell from noise adds nothing.
    """
    k = max(c.size, s.size)
    c, s = _pad(np.asarray(c, dtype=np.float64), k), _pad(np.asarray(s, dtype=np.float64), k)
    if c.sum() <= 0 or s.sum() <= 0:
        return 0.0
    used = max(1, int(np.count_nonzero(c + s)))
    z = z if z is not None else NormalDist().inv_cdf(1 - FLOOR_LEVEL / (2 * used))
    pc, ps = c / c.sum(), s / s.sum()
    half = z * np.sqrt((pc * (1 - pc) + 0.25 / c.sum()) / c.sum() + (ps * (1 - ps) + 0.25 / s.sum()) / s.sum())
    return float(0.5 * np.maximum(0.0, np.abs(pc - ps) - half).sum())


# --- helpers ------------------------------------------------------------------------------------------------


def _edge(buckets: Mapping[float, float], q: float) -> float | None:
    """The finite bucket bound where stable's cumulative share is nearest ``q`` (at least 2 % above it)."""
    finite = sorted(b for b in buckets if math.isfinite(b))
    total = max(buckets.values()) if buckets else 0.0
    if total <= 0 or not finite:
        return None
    best, best_gap = None, math.inf
    for b in finite:
        share = buckets[b] / total
        if 1 - share < 0.02:
            continue
        if abs(share - q) < best_gap:
            best, best_gap = b, abs(share - q)
    return best


def _above(buckets: Mapping[float, float], edge: float) -> float:
    """Observations above ``edge`` in cumulative buckets (total minus the edge's cumulative count)."""
    if not buckets:
        return 0.0
    return max(0.0, max(buckets.values()) - buckets.get(edge, 0.0))


def _vec(classes: Mapping[int, float] | np.ndarray) -> np.ndarray:
    if isinstance(classes, np.ndarray):
        return classes.astype(np.float64)
    keys = [int(k) for k in classes]
    out = np.zeros(max(NUM_CLASSES, max(keys, default=0) + 1), dtype=np.float64)
    if keys:
        out[keys] = np.maximum(0.0, np.fromiter(classes.values(), dtype=np.float64, count=len(keys)))
    return out


def _pad(v: np.ndarray, k: int) -> np.ndarray:
    return v if v.size >= k else np.concatenate([v, np.zeros(k - v.size)])


def _one(data: Mapping[str, Any] | None) -> SeriesCounters:
    return SeriesCounters.from_dict(data) if data else SeriesCounters()


def _summary(s: SeriesCounters) -> dict[str, Any]:
    lat = s.latency_count > 0
    return {
        "requests": int(s.requests), "errors": int(s.errors),
        "error_rate": s.errors / s.requests if s.requests else None,
        "latency_samples": int(s.latency_count),
        "latency_median_s": histogram_quantile(0.5, s.buckets) if lat else None,
        "latency_p99_s": histogram_quantile(0.99, s.buckets) if lat else None,
        "class_counts": [int(v) for v in _vec(s.classes)],
        "feedback_correct": int(s.feedback_correct), "feedback_total": int(s.feedback_total),
        "accuracy": s.feedback_correct / s.feedback_total if s.feedback_total else None,
    }


def _copy(state: Mapping[str, Any]) -> dict[str, Any]:
    import json

    return json.loads(json.dumps(state))


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
