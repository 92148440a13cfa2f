"""The rollback guard's pure parts: the analysis engine (canary against stable) and input drift against training data.

Nothing here does I/O or imports Airflow; the sequential tests are written out in NumPy (scipy has no mSPRT), so
importing ``mlcd.guard`` stays cheap for DAG parsing.
"""

from __future__ import annotations

from mlcd.guard.drift import DriftMonitor, DriftReference, DriftReport, DriftThresholds, psi
from mlcd.guard.judge import (
    ACCURACY,
    CHECKS,
    CLASS_DISTRIBUTION,
    ERROR_RATE,
    LATENCY,
    Analysis,
    CheckResult,
    GuardThresholds,
    GuardVerdict,
)

__all__ = [
    "ACCURACY",
    "CHECKS",
    "CLASS_DISTRIBUTION",
    "ERROR_RATE",
    "LATENCY",
    "Analysis",
    "CheckResult",
    "DriftMonitor",
    "DriftReference",
    "DriftReport",
    "DriftThresholds",
    "GuardThresholds",
    "GuardVerdict",
    "psi",
]
