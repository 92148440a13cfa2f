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
from mlcd.registry.lease import LeaseError, LeaseHeldError, LeaseLostError
from mlcd.registry.protocol import Registry
from mlcd.registry.state import RolloutRecord, RolloutState, check_transition, is_allowed
from mlcd.registry.tags import Alias, Event, Violation

__all__ = [
    "ALIASES",
    "Alias",
    "Event",
    "GateRejected",
    "IllegalTransitionError",
    "LeaseError",
    "LeaseHeldError",
    "LeaseLostError",
    "ModelRegistry",
    "Registry",
    "RegistryError",
    "RegistryUnavailableError",
    "RolloutError",
    "RolloutRecord",
    "RolloutState",
    "StaleAliasError",
    "Violation",
    "check_transition",
    "is_allowed",
]
