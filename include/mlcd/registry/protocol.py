"""The typed face of the registry: what the canary task, the guard, the gate and the CLI may call.

:class:`~mlcd.registry.ModelRegistry` (MLflow) implements it; a caller that types against :class:`Registry`
does not depend on how aliases and records are stored.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

from mlcd.registry.state import RolloutRecord, RolloutState


@runtime_checkable
class Registry(Protocol):
    tracking_uri: str
    model_name: str

    # -- reading
    def aliases(self) -> dict[str, str]: ...
    def get_alias_version(self, alias: str) -> str | None: ...
    def get_state(self, version: str) -> RolloutRecord: ...
    def get_version_info(self, version: str) -> dict[str, Any]: ...
    def status(self) -> dict[str, Any]: ...
    def history(self) -> list[dict[str, Any]]: ...
    def alias_history(self) -> list[dict[str, Any]]: ...
    def champion_at(self, when: str) -> str | None: ...

    # -- the journal
    def register_run_model(self, run_id: str, model_uri: str, tags: dict[str, str] | None = None) -> str: ...
    def set_version_tags(self, version: str, tags: dict[str, Any]) -> None: ...
    def record_transition(
        self,
        version: str,
        to_state: str | RolloutState,
        reason: str,
        actor: str,
        dag_run_id: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> RolloutRecord: ...
    def record_event(
        self,
        version: str,
        event: str,
        details: dict[str, Any] | None = None,
        actor: str | None = None,
        dag_run_id: str | None = None,
    ) -> RolloutRecord: ...

    # -- alias moves (each under the registry lease)
    def writer(self, op: str, **args: Any) -> AbstractContextManager[Any]: ...
    def set_alias(self, alias: str, version: str, expected: str | None) -> None: ...
    def delete_alias(self, alias: str, expected: str) -> None: ...
    def start_canary(self, version: str, actor: str, reason: str, dag_run_id: str | None = None) -> RolloutRecord: ...
    def promote(
        self,
        version: str,
        actor: str,
        reason: str,
        dag_run_id: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> RolloutRecord: ...
    def bootstrap_champion(
        self, version: str, actor: str, reason: str = ..., dag_run_id: str | None = None
    ) -> RolloutRecord: ...
    def reject(
        self, version: str, verdict_reasons: list[str] | str, actor: str, dag_run_id: str | None = None
    ) -> RolloutRecord: ...
    def rollback(
        self, version: str, reason: str, evidence: dict[str, Any] | None, actor: str, dag_run_id: str | None = None
    ) -> RolloutRecord: ...

    # -- invariants
    def violations(self) -> list[dict[str, Any]]: ...
    def reconcile(self, dry_run: bool = False) -> dict[str, Any]: ...


__all__ = ["Registry"]
