"""Evaluate a challenger against the champion on the same frozen test set and judge it with a pure gate."""

from __future__ import annotations

from mlcd.evaluation.gate import GateConfig, GateVerdict, judge, mcnemar
from mlcd.evaluation.metrics import classification_metrics

__all__ = ["GateConfig", "GateVerdict", "classification_metrics", "judge", "mcnemar"]
