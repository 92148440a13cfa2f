"""Canary rollout: a declarative spec with pure step functions, swappable routers, and the step logic.

Only :mod:`mlcd.rollout.spec` is imported here, so the Airflow operator and the guard can import the spec
without pulling in HTTP clients, MLflow or TensorFlow.
"""

from __future__ import annotations

from mlcd.rollout.spec import (
    Action,
    Outcome,
    RolloutSpec,
    StepVerdict,
    VariantStats,
    next_action,
    next_weight,
)

__all__ = [
    "Action",
    "Outcome",
    "RolloutSpec",
    "StepVerdict",
    "VariantStats",
    "next_action",
    "next_weight",
]
