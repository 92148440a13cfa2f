"""The promotion gate on constructed predictions whose significance is known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from mlcd.evaluation.gate import GateConfig, judge, loss_upper_bound, mcnemar_counts
from mlcd.evaluation.metrics import classification_metrics

pytestmark = pytest.mark.unit


def paired(n: int, b: int, c: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``y``, challenger and champion predictions over ``n`` balanced examples with exactly ``b``
    champion-only-right and ``c`` challenger-only-right examples; both right everywhere else."""
    y = np.arange(n) % 10
    chal = y.copy()
    champ = y.copy()
    rng = np.random.default_rng(seed)
    idx = rng.permutation(n)
    chal[idx[:b]] = (y[idx[:b]] + 1) % 10
    champ[idx[b : b + c]] = (y[idx[b : b + c]] + 1) % 10
    return y, chal, champ


def test_mcnemar_twenty_discordant_all_one_way_is_significant() -> None:
    r = mcnemar_counts(20, 0)
    assert r.p_exact == pytest.approx(2 * 0.5**20)
    assert r.p_mid < r.p_exact < 0.001


def test_mcnemar_eleven_vs_nine_is_not_significant() -> None:
    r = mcnemar_counts(11, 9)
    assert r.p_exact == pytest.approx(0.8238, abs=1e-4)
    assert r.p_mid == pytest.approx(0.6636, abs=1e-4)


def test_mcnemar_no_discordant_pairs() -> None:
    r = mcnemar_counts(0, 0)
    assert (r.p_exact, r.p_mid) == (1.0, 1.0)


def test_significant_regression_fails_with_numbers() -> None:
    y, chal, champ = paired(2000, b=20, c=0)
    v = judge(chal, champ, y, GateConfig(accuracy_floor=0.5))
    assert not v.passed and v.verdict == "fail"
    assert (v.b, v.c) == (20, 0)
    assert v.p_value is not None and v.p_value < 1e-5
    assert any("not shown non-inferior" in r and "20 challenger-only errors" in r for r in v.reasons)


def test_noise_on_a_large_test_set_is_non_inferior() -> None:
    y, chal, champ = paired(10000, b=11, c=9)
    v = judge(chal, champ, y, GateConfig(accuracy_floor=0.5))
    assert v.passed and v.verdict == "pass", v.reasons
    assert (v.b, v.c) == (11, 9)
    assert v.p_value == pytest.approx(0.6636, abs=1e-4)
    assert v.metrics["loss_upper_bound"] < 0.002


def test_the_same_noise_on_a_small_test_set_is_not_shown_non_inferior() -> None:
    # 11 vs 9 on 2,000 examples: not significantly worse, but the loss could be up to ~0.46 points.
    y, chal, champ = paired(2000, b=11, c=9)
    v = judge(chal, champ, y, GateConfig(accuracy_floor=0.5))
    assert not v.passed and any("not shown non-inferior" in r for r in v.reasons), v.reasons
    assert judge(chal, champ, y, GateConfig(accuracy_floor=0.5, non_inferiority_margin=0.005)).passed


def _brute_force_upper(b: int, d: int, alpha: float) -> float:
    """Clopper-Pearson upper bound by bisection on the exact binomial tail, summed term by term."""
    from math import comb

    def tail(theta: float) -> float:  # P(X <= b | theta)
        return sum(comb(d, k) * theta**k * (1 - theta) ** (d - k) for k in range(b + 1))

    lo, hi = b / d, 1.0
    if b == d:
        return 1.0
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if tail(mid) > alpha else (lo, mid)
    return (lo + hi) / 2


@pytest.mark.parametrize(("b", "c", "n"), [(11, 9, 10000), (20, 0, 2000), (0, 12, 5000), (40, 35, 10000)])
def test_loss_bound_matches_a_brute_force_clopper_pearson(b: int, c: int, n: int) -> None:
    theta = _brute_force_upper(b, b + c, 0.05)
    assert loss_upper_bound(b, c, n, 0.05) == pytest.approx((b + c) * (2 * theta - 1) / n, rel=1e-6)
    assert loss_upper_bound(0, 0, n, 0.05) == 0.0


def test_mid_p_mcnemar_matches_brute_force_enumeration() -> None:
    from math import comb

    for b, c in ((11, 9), (3, 17), (0, 5), (25, 25)):
        n, k = b + c, min(b, c)
        pmf = [comb(n, i) / 2**n for i in range(n + 1)]
        exact = min(1.0, 2 * sum(pmf[: k + 1]))
        mid = min(1.0, 2 * sum(pmf[:k]) + pmf[k])
        r = mcnemar_counts(b, c)
        assert (r.p_exact, r.p_mid) == (pytest.approx(exact), pytest.approx(mid))


def test_exact_mode_uses_exact_p() -> None:
    y, chal, champ = paired(10000, b=11, c=9)
    v = judge(chal, champ, y, GateConfig(accuracy_floor=0.5, mid_p=False))
    assert v.p_value == pytest.approx(0.8238, abs=1e-4)


def test_require_improvement() -> None:
    y, chal, champ = paired(2000, b=9, c=11)
    cfg = GateConfig(accuracy_floor=0.5, require_improvement=True)
    assert not judge(chal, champ, y, cfg).passed
    y, chal, champ = paired(10000, b=0, c=20)
    v = judge(chal, champ, y, cfg)
    assert v.passed, v.reasons
    assert any("significant improvement" in r for r in v.reasons)


def test_accuracy_floor() -> None:
    y = np.arange(100) % 10
    pred = y.copy()
    pred[:20] = (pred[:20] + 1) % 10  # 80 % accuracy
    v = judge(pred, None, y, GateConfig(accuracy_floor=0.9))
    assert not v.passed
    assert any("0.8000 < floor 0.9000" in r for r in v.reasons)
    assert judge(pred, None, y, GateConfig(accuracy_floor=0.8)).passed


def test_per_class_collapse_fails_even_without_significant_overall_change() -> None:
    # Class 3 collapses (recall 1.0 -> 0.5) while the challenger gains elsewhere: overall even.
    y = np.arange(1000) % 10  # 100 per class
    champ = y.copy()
    chal = y.copy()
    threes = np.flatnonzero(y == 3)[:50]
    chal[threes] = 5
    others = np.flatnonzero(y != 3)[:50]
    champ[others] = (y[others] + 1) % 10
    v = judge(chal, champ, y, GateConfig(accuracy_floor=0.5))
    assert not v.passed
    assert v.b == v.c == 50
    assert any("class 3 1.000 -> 0.500" in r for r in v.reasons), v.reasons
    # The same drop is allowed with a looser limit (and a margin wide enough for 1,000 examples).
    assert judge(chal, champ, y, GateConfig(accuracy_floor=0.5, max_class_recall_drop=0.6,
                                            non_inferiority_margin=0.03)).passed


def test_per_class_drop_on_tiny_classes_is_not_judged() -> None:
    y = np.arange(50) % 10  # 5 per class
    champ = y.copy()
    chal = y.copy()
    chal[y == 3] = 4
    champ[(y == 7)] = 8
    # 50 examples cannot show non-inferiority at 0.2 points; the margin is widened to isolate the class rule.
    v = judge(chal, champ, y, GateConfig(accuracy_floor=0.5, min_class_support=20, non_inferiority_margin=0.5))
    assert v.passed, v.reasons
    assert any("not judged" in r for r in v.reasons)


def test_first_model_judged_by_floor_alone() -> None:
    y = np.arange(100) % 10
    v = judge(y.copy(), None, y, GateConfig(accuracy_floor=0.99, require_improvement=True))
    assert v.passed and v.first_model
    assert v.p_value is None and v.b is None
    assert any("first model" in r for r in v.reasons)


def test_class_recall_floor_catches_collapse_in_a_first_model() -> None:
    y = np.arange(1000) % 10
    pred = y.copy()
    pred[y == 7] = 1  # never predicts 7: 90 % accurate overall
    assert judge(pred, None, y, GateConfig(accuracy_floor=0.85)).passed
    v = judge(pred, None, y, GateConfig(accuracy_floor=0.85, class_recall_floor=0.5))
    assert not v.passed and any("class 7 0.000" in r for r in v.reasons)


def test_force_passes_and_is_recorded() -> None:
    y, chal, champ = paired(2000, b=20, c=0)
    v = judge(chal, champ, y, GateConfig(accuracy_floor=0.5), force=True)
    assert v.passed and v.forced and not v.gate_passed
    assert v.verdict == "forced"
    assert v.reasons[0].startswith("forced by manual override")
    assert any("not shown non-inferior" in r for r in v.reasons)
    d = v.to_dict()
    assert d["verdict"] == "forced" and d["summary"].startswith("gate FORCED")


def test_verdict_dict_is_json_safe() -> None:
    import json

    y, chal, champ = paired(500, b=3, c=4)
    json.dumps(judge(chal, champ, y).to_dict())


def test_config_from_dict_refuses_typos() -> None:
    assert GateConfig.from_dict({"alpha": 0.01}).alpha == 0.01
    with pytest.raises(ValueError, match="unknown gate settings"):
        GateConfig.from_dict({"alhpa": 0.01})
    with pytest.raises(ValueError):
        GateConfig(alpha=1.5)


def test_metrics() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([0, 1, 1, 1, 2, 0])
    m = classification_metrics(y, p)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class_recall"][:3] == [0.5, 1.0, 0.5]
    assert m["per_class_recall"][3] is None  # absent class: no recall, not a collapse
    # precision: class0 1/2, class1 2/3, class2 1/1 → macro over present classes
    assert m["precision_macro"] == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    assert m["recall_macro"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert m["confusion_matrix"][0][:3] == [1, 1, 0]
    with pytest.raises(ValueError, match="outside"):
        classification_metrics(np.array([0, 11]), np.array([0, 1]))
    with pytest.raises(ValueError, match="labels but"):
        classification_metrics(np.array([0, 1]), np.array([0]))
