"""Registry errors: each one says in one line what happened and what to do."""

from __future__ import annotations

from mlcd.registry.state import IllegalTransitionError


class RegistryError(Exception):
    """Base class of the registry's own errors."""


class RegistryUnavailableError(RegistryError):
    """The MLflow server cannot be reached (down, restarting, or answering 5xx). Safe to retry."""


class StaleAliasError(RegistryError):
    """An alias no longer points where the caller expected: someone else moved it. Re-read and decide again."""


class RolloutError(RegistryError):
    """A registry move that the current aliases and records do not allow (e.g. rollback with nothing to restore)."""


class GateRejected(RegistryError):
    """The gate rejected the challenger; the message is the verdict. Not worth retrying."""

    def __init__(self, version: str, verdict: str) -> None:
        super().__init__(f"model version {version} rejected: {verdict}")
        self.version = version
        self.verdict = verdict


__all__ = [
    "GateRejected",
    "IllegalTransitionError",
    "RegistryError",
    "RegistryUnavailableError",
    "RolloutError",
    "StaleAliasError",
]
