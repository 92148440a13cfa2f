"""The promotion gate: a pure, configurable judgement of a challenger against the champion.

Both models predict the same frozen test examples, so their errors are paired: McNemar's test looks only at
the discordant examples, ``b`` (champion right, challenger wrong) and ``c`` (challenger right, champion
wrong). Under "no difference" each discordant example is a fair coin, so ``min(b, c)`` is binomial(b + c, ½).
The exact test is conservative for small counts; the mid-p variant (Fagerland et al., 2013) keeps the size
close to alpha and is what the gate decides on by default. Both are reported.

Promotion is a *non-inferiority* decision: the challenger passes only when the upper confidence bound of its
paired accuracy loss, ``(b - c) / N``, is below a stated margin (default 0.2 accuracy points). Conditional on the
``b + c`` discordant pairs, ``b`` is binomial, so the bound is ``(b + c) / N × (2 θ_U − 1)`` with ``θ_U`` the
one-sided ``1 − alpha`` Clopper-Pearson bound (``scipy.stats.binomtest(...).proportion_ci``). A challenger that
is merely "not significantly worse" on a small test set no longer passes: too few examples give a wide bound.

The gate fails closed: a challenger passes only when every check passes. ``force`` passes it anyway and
says so in the reasons, keeping what the gate would have decided.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mlcd.evaluation.metrics import classification_metrics
from mlcd.model_io import NUM_CLASSES


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the gate. Defaults suit the MNIST reference model; DAG params override them.

    Attributes:
        accuracy_floor: the challenger's accuracy must be at least this, champion or not.
        alpha: significance level of the McNemar test.
        max_class_recall_drop: largest allowed drop of any class's recall against the champion.
        min_class_support: classes with fewer test examples are not judged for a drop (too noisy).
        class_recall_floor: optional absolute floor on every class's recall (catches a collapsed class
            even for the first model); ``None`` turns it off.
        require_improvement: pass only when the challenger is *significantly better* than the champion.
        mid_p: report (and decide ``require_improvement`` on) the mid-p McNemar value (else the exact one).
        non_inferiority_margin: the largest paired accuracy loss tolerated, as a fraction (0.002 = 0.2 points);
            the upper ``1 - alpha`` confidence bound of the loss must be below it.
    """

    accuracy_floor: float = 0.90
    alpha: float = 0.05
    max_class_recall_drop: float = 0.10
    min_class_support: int = 20
    class_recall_floor: float | None = None
    require_improvement: bool = False
    mid_p: bool = True
    non_inferiority_margin: float = 0.002

    def __post_init__(self) -> None:
        if not 0.0 <= self.accuracy_floor <= 1.0:
            raise ValueError(f"accuracy_floor must be in [0, 1], got {self.accuracy_floor}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not 0.0 <= self.max_class_recall_drop <= 1.0:
            raise ValueError(f"max_class_recall_drop must be in [0, 1], got {self.max_class_recall_drop}")
        if self.min_class_support < 0:
            raise ValueError(f"min_class_support must be >= 0, got {self.min_class_support}")
        if not 0.0 < self.non_inferiority_margin <= 1.0:
            raise ValueError(f"non_inferiority_margin must be in (0, 1], got {self.non_inferiority_margin}")
        if self.class_recall_floor is not None and not 0.0 <= self.class_recall_floor <= 1.0:
            raise ValueError(f"class_recall_floor must be in [0, 1], got {self.class_recall_floor}")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> GateConfig:
        """Build from a DAG param dict; unknown keys are refused so a typo is not silently ignored."""
        if not data:
            return cls()
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown gate settings {unknown}; known: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class McNemarResult:
    """Paired comparison: ``b`` challenger-only errors, ``c`` champion-only errors."""

    b: int
    c: int
    p_exact: float
    p_mid: float

    @property
    def n(self) -> int:
        return self.b + self.c


@dataclass
class GateVerdict:
    """What the gate decided and why. ``passed`` already includes a ``force`` override."""

    passed: bool
    reasons: list[str]
    metrics: dict[str, Any]
    p_value: float | None = None
    p_value_exact: float | None = None
    p_value_mid: float | None = None
    b: int | None = None
    c: int | None = None
    first_model: bool = False
    forced: bool = False
    gate_passed: bool = False  # the decision without the override
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """``pass``, ``fail`` or ``forced`` (passed only because of the override)."""
        if self.forced and not self.gate_passed:
            return "forced"
        return "pass" if self.passed else "fail"

    @property
    def summary(self) -> str:
        """One readable line: the verdict and its reasons."""
        return f"gate {self.verdict.upper()}: " + "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (XCom, tags, artifacts)."""
        out = asdict(self)
        out["verdict"] = self.verdict
        out["summary"] = self.summary
        return out


def mcnemar(challenger_correct: np.ndarray, champion_correct: np.ndarray) -> McNemarResult:
    """Exact and mid-p two-sided McNemar test on paired correctness vectors."""
    ch = np.asarray(challenger_correct, dtype=bool)
    cp = np.asarray(champion_correct, dtype=bool)
    if ch.shape != cp.shape:
        raise ValueError(f"paired vectors differ in length: {ch.size} vs {cp.size}")
    b = int(np.sum(cp & ~ch))
    c = int(np.sum(ch & ~cp))
    return mcnemar_counts(b, c)


def mcnemar_counts(b: int, c: int) -> McNemarResult:
    """McNemar p-values from the discordant counts alone."""
    if b < 0 or c < 0:
        raise ValueError("discordant counts must be >= 0")
    n = b + c
    if n == 0:
        return McNemarResult(b=0, c=0, p_exact=1.0, p_mid=1.0)
    from scipy.stats import binom

    k = min(b, c)
    cdf = float(binom.cdf(k, n, 0.5))
    pmf = float(binom.pmf(k, n, 0.5))
    p_exact = min(1.0, 2.0 * cdf)
    p_mid = min(1.0, 2.0 * cdf - pmf)
    return McNemarResult(b=b, c=c, p_exact=p_exact, p_mid=p_mid)


def loss_upper_bound(b: int, c: int, n: int, alpha: float) -> float:
    """One-sided ``1 - alpha`` upper bound of the paired accuracy loss ``(b - c) / n`` (champion minus challenger).

    Conditional on the ``b + c`` discordant pairs, ``b`` ~ binomial(b + c, θ) and the loss is
    ``(b + c) (2 θ - 1) / n``; θ's bound is Clopper-Pearson (exact), from scipy.
    """
    if n <= 0:
        raise ValueError("n must be > 0")
    d = b + c
    if d == 0:
        return 0.0
    from scipy.stats import binomtest

    theta_u = float(binomtest(b, d).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").high)
    return d * (2 * theta_u - 1) / n


def judge(
    challenger_pred: np.ndarray,
    champion_pred: np.ndarray | None,
    y_true: np.ndarray,
    config: GateConfig | None = None,
    force: bool = False,
) -> GateVerdict:
    """Judge a challenger's predictions against the champion's on the same examples.

    Checks, all of which must pass: accuracy floor; optional per-class recall floor; and, when there is a
    champion, no significant regression (McNemar), no class whose recall drops more than the limit, and in
    ``require_improvement`` mode a significant improvement. Without a champion only the floors apply.

    Args:
        challenger_pred: predicted classes of the challenger, shape N.
        champion_pred: the champion's predicted classes on the same N examples, or None (first model).
        y_true: true classes, shape N.
        config: thresholds; defaults to :class:`GateConfig()`.
        force: manual override: the verdict passes and records that it was forced.

    Returns:
        The verdict with human-readable reasons carrying the numbers.
    """
    cfg = config or GateConfig()
    y_true = np.asarray(y_true).reshape(-1)
    challenger_pred = np.asarray(challenger_pred).reshape(-1)
    chal = classification_metrics(y_true, challenger_pred, NUM_CLASSES)
    checks: list[dict[str, Any]] = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"check": name, "passed": bool(ok), "detail": detail})

    acc = chal["accuracy"]
    check(
        "accuracy_floor",
        acc >= cfg.accuracy_floor,
        f"challenger accuracy {acc:.4f} {'>=' if acc >= cfg.accuracy_floor else '<'} floor "
        f"{cfg.accuracy_floor:.4f} on {chal['n']} test examples",
    )
    if cfg.class_recall_floor is not None:
        low = [
            (k, r)
            for k, r in enumerate(chal["per_class_recall"])
            if r is not None and r < cfg.class_recall_floor
        ]
        check(
            "class_recall_floor",
            not low,
            (
                "every class recall >= " + f"{cfg.class_recall_floor:.2f}"
                if not low
                else "class recall below floor "
                + f"{cfg.class_recall_floor:.2f}: "
                + ", ".join(f"class {k} {r:.3f}" for k, r in low)
            ),
        )

    metrics: dict[str, Any] = {"challenger": chal, "champion": None}
    result: McNemarResult | None = None
    first_model = champion_pred is None
    if first_model:
        check("champion", True, "no champion yet: judged by the floor alone (first model)")
    else:
        champion_pred = np.asarray(champion_pred).reshape(-1)
        champ = classification_metrics(y_true, champion_pred, NUM_CLASSES)
        metrics["champion"] = champ
        result = mcnemar(challenger_pred == y_true, champion_pred == y_true)
        p = result.p_mid if cfg.mid_p else result.p_exact
        kind = "mid-p" if cfg.mid_p else "exact"
        diff = acc - champ["accuracy"]
        paired = (
            f"challenger {acc:.4f} vs champion {champ['accuracy']:.4f} (diff {diff:+.4f}); "
            f"discordant pairs: {result.b} challenger-only errors, {result.c} champion-only errors; "
            f"McNemar {kind} p={p:.3g}, alpha={cfg.alpha}"
        )
        bound = loss_upper_bound(result.b, result.c, int(y_true.size), cfg.alpha)
        inferior = not bound < cfg.non_inferiority_margin
        check("non_inferiority", not inferior,
              f"accuracy loss upper {1 - cfg.alpha:.0%} bound {bound * 100:+.3f} points "
              f"{'>=' if inferior else '<'} margin {cfg.non_inferiority_margin * 100:.2f} points"
              + (" (not shown non-inferior)" if inferior else "") + "; " + paired)
        metrics["loss_upper_bound"] = bound
        if cfg.require_improvement:
            improved = result.c > result.b and p < cfg.alpha
            check(
                "significant_improvement",
                improved,
                ("significant improvement: " if improved else "no significant improvement (required): ")
                + paired,
            )
        drops = []
        skipped = []
        for k in range(NUM_CLASSES):
            r_new, r_old = chal["per_class_recall"][k], champ["per_class_recall"][k]
            if r_new is None or r_old is None:
                continue
            if chal["per_class_support"][k] < cfg.min_class_support:
                skipped.append(k)
                continue
            if r_old - r_new > cfg.max_class_recall_drop:
                drops.append((k, r_old, r_new))
        detail = (
            "per-class recall collapse: "
            + ", ".join(f"class {k} {o:.3f} -> {n:.3f} (drop {o - n:.3f})" for k, o, n in drops)
            + f" exceeds the limit {cfg.max_class_recall_drop:.3f}"
            if drops
            else f"no class recall dropped more than {cfg.max_class_recall_drop:.3f}"
        )
        if skipped:
            detail += f" (classes {skipped} not judged: fewer than {cfg.min_class_support} examples)"
        check("per_class_recall_drop", not drops, detail)

    gate_passed = all(c["passed"] for c in checks)
    failed = [c["detail"] for c in checks if not c["passed"]]
    reasons = failed if not gate_passed else [c["detail"] for c in checks]
    if force:
        reasons = (
            ["forced by manual override; the gate alone would have passed"]
            if gate_passed
            else ["forced by manual override; the gate alone would have FAILED"]
        ) + reasons
    p_value = None if result is None else (result.p_mid if cfg.mid_p else result.p_exact)
    return GateVerdict(
        passed=gate_passed or force,
        reasons=reasons,
        metrics=metrics,
        p_value=p_value,
        p_value_exact=None if result is None else result.p_exact,
        p_value_mid=None if result is None else result.p_mid,
        b=None if result is None else result.b,
        c=None if result is None else result.c,
        first_model=first_model,
        forced=bool(force),
        gate_passed=gate_passed,
        checks=checks,
    )
