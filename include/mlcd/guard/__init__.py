"""The rollback guard: when to roll back (one poll of the gateway judged by :mod:`mlcd.rollout.analysis`) and
input drift against training data.

The guard decides; what it decides is done by :mod:`mlcd.rollout.actions` (``mlcd.rollout`` never imports
``mlcd.guard``). Nothing here imports Airflow, so importing ``mlcd.guard`` stays cheap for DAG parsing.
"""

from __future__ import annotations

from mlcd.guard.drift import DriftMonitor, DriftReference, DriftReport, DriftThresholds, psi

__all__ = [
    "DriftMonitor",
    "DriftReference",
    "DriftReport",
    "DriftThresholds",
    "psi",
]
