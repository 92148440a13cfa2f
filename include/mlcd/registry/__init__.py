"""The MLflow model registry as mlcd uses it: aliases, not stages, and a rollout record per version."""

from __future__ import annotations

from mlcd.registry.client import ALIASES, ModelRegistry
from mlcd.registry.errors import (
    GateRejected,
    IllegalTransitionError,
    RegistryError,
    RegistryUnavailableError,
    RolloutError,
    StaleAliasError,
)
from mlcd.registry.state import RolloutRecord, RolloutState, check_transition, is_allowed

__all__ = [
    "ALIASES",
    "GateRejected",
    "IllegalTransitionError",
    "ModelRegistry",
    "RegistryError",
    "RegistryUnavailableError",
    "RolloutError",
    "RolloutRecord",
    "RolloutState",
    "StaleAliasError",
    "check_transition",
    "is_allowed",
]
