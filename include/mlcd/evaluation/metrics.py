"""Classification metrics from label vectors, in plain numpy (no scikit-learn at run time).

Every value is a Python float/int or list of them, so the result goes into XCom, MLflow and JSON as is.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlcd.model_io import NUM_CLASSES


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """``num_classes × num_classes`` counts: row = true class, column = predicted class."""
    y_true, y_pred = _check(y_true, y_pred, num_classes)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = NUM_CLASSES
) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1, per-class recall and the confusion matrix.

    A class with no true examples has no recall: it is left out of the macro recall/F1 averages and its
    per-class recall is ``None`` (so an absent class is never read as a collapse). A class never predicted
    has precision 0 when it has true examples, which is what a collapsed class should cost.

    Returns:
        ``{"n", "accuracy", "precision_macro", "recall_macro", "f1_macro", "per_class_recall",
        "per_class_support", "confusion_matrix"}``.
    """
    cm = confusion_matrix(y_true, y_pred, num_classes)
    n = int(cm.sum())
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    present = support > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(present, tp / np.where(present, support, 1.0), np.nan)
        precision = np.where(predicted > 0, tp / np.where(predicted > 0, predicted, 1.0), 0.0)
        denom = precision + np.nan_to_num(recall)
        f1 = np.where(denom > 0, 2 * precision * np.nan_to_num(recall) / np.where(denom > 0, denom, 1.0), 0.0)
    macro = present if present.any() else np.ones(num_classes, dtype=bool)
    return {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "precision_macro": float(precision[macro].mean()),
        "recall_macro": float(np.nan_to_num(recall)[macro].mean()),
        "f1_macro": float(f1[macro].mean()),
        "per_class_recall": [None if np.isnan(r) else float(r) for r in recall],
        "per_class_support": [int(s) for s in support],
        "confusion_matrix": cm.tolist(),
    }


def _check(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).reshape(-1)
    y_pred = np.asarray(y_pred).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    if y_true.size == 0:
        raise ValueError("no examples to evaluate")
    for name, arr in (("y_true", y_true), ("y_pred", y_pred)):
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must hold integer class labels, got {arr.dtype}")
        if arr.min() < 0 or arr.max() >= num_classes:
            raise ValueError(f"{name} has labels outside 0..{num_classes - 1}")
    return y_true.astype(np.int64), y_pred.astype(np.int64)
