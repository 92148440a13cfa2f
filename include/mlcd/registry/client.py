"""The model registry as mlcd uses it: MLflow registered-model aliases plus a per-version rollout record.

Aliases (``champion``, ``canary``, ``previous``) are what serving loads; the rollout record (state and history,
kept in model-version tags) is what the canary task, the guard and people read. The class is assembled from
its parts, each in its own module:

* :mod:`mlcd.registry.tags` — the vocabulary: every alias, tag key, state, event and violation name;
* :mod:`mlcd.registry.base` — validation, MLflow calls that fail in one line, versions and tags;
* :mod:`mlcd.registry.journal` — the event journal (each version's rollout record, replayed);
* :mod:`mlcd.registry.moves` — alias moves, one writer at a time under :mod:`mlcd.registry.lease`, intent first;
* :mod:`mlcd.registry.reporting` — status, history and the alias timeline;
* :mod:`mlcd.registry.reconcile` — the invariants, checked and repaired.

:class:`mlcd.registry.protocol.Registry` is the typed protocol it implements. Every name that used to live
here is still importable from here.
"""

from __future__ import annotations

from typing import Any

from mlcd.registry.base import (
    MAX_DETAILS_CHARS,
    MAX_HISTORY_VIEW_CHARS,
    MAX_TEXT_CHARS,
    RegistryBase,
    _clip,
    _is_unavailable,
    _ms_iso,
    _one_line,
    compact_json,
    now_iso,
    validate_alias,
    validate_model_name,
    validate_run_id,
    validate_version,
)
from mlcd.registry.journal import JournalMixin, _entry_key, replay, trim_history
from mlcd.registry.moves import AliasMovesMixin
from mlcd.registry.reporting import ReportingMixin, _accuracy
from mlcd.registry.tags import (
    ALIASES,
    TAG_CODE_VERSION,
    TAG_DAG_RUN,
    TAG_ENTRY_PREFIX,
    TAG_HISTORY,
    TAG_METRICS,
    TAG_P_VALUE,
    TAG_PROMOTED_AT,
    TAG_PROMOTED_BY,
    TAG_REASONS,
    TAG_ROLLBACK_EVIDENCE,
    TAG_ROLLBACK_REASON,
    TAG_RUN_ID,
    TAG_SNAPSHOT,
    TAG_STATE,
    TAG_VERDICT,
)


class ModelRegistry(AliasMovesMixin, ReportingMixin):
    """One registered model in MLflow, moved by aliases and recorded in each version's rollout record.

    Args:
        tracking_uri: the MLflow server (``http://127.0.0.1:5000``); also used as the registry URI.
        model_name: the registered model's name.
        client: an ``MlflowClient`` built elsewhere (e.g. by ``MlflowHook`` with a token).
        lease_url: the ledger database for the registry lease (default ``MLCD_LEDGER_URL`` or the ledger file).
    """

    def violations(self) -> list[dict[str, Any]]:
        """Every broken invariant (see :mod:`mlcd.registry.reconcile`), as dicts; empty when consistent."""
        from mlcd.registry.reconcile import findings

        return [f.to_dict() for f in findings(self)]

    def reconcile(self, dry_run: bool = False) -> dict[str, Any]:
        """Repair every broken invariant under the lease: ``{"repairs", "left", "consistent"}``."""
        from mlcd.registry.reconcile import reconcile

        return reconcile(self, dry_run=dry_run)

    def status(self) -> dict[str, Any]:
        """Aliases, versions, record/alias disagreements and invariant violations (``consistent`` covers both)."""
        out = super().status()
        violations = self.violations()
        out["violations"] = violations
        out["consistent"] = bool(out["consistent"]) and not violations
        return out


__all__ = [
    "ALIASES",
    "MAX_DETAILS_CHARS",
    "MAX_HISTORY_VIEW_CHARS",
    "MAX_TEXT_CHARS",
    "TAG_CODE_VERSION",
    "TAG_DAG_RUN",
    "TAG_ENTRY_PREFIX",
    "TAG_HISTORY",
    "TAG_METRICS",
    "TAG_PROMOTED_AT",
    "TAG_PROMOTED_BY",
    "TAG_P_VALUE",
    "TAG_REASONS",
    "TAG_ROLLBACK_EVIDENCE",
    "TAG_ROLLBACK_REASON",
    "TAG_RUN_ID",
    "TAG_SNAPSHOT",
    "TAG_STATE",
    "TAG_VERDICT",
    "AliasMovesMixin",
    "JournalMixin",
    "ModelRegistry",
    "RegistryBase",
    "ReportingMixin",
    "_accuracy",
    "_clip",
    "_entry_key",
    "_is_unavailable",
    "_ms_iso",
    "_one_line",
    "compact_json",
    "now_iso",
    "replay",
    "trim_history",
    "validate_alias",
    "validate_model_name",
    "validate_run_id",
    "validate_version",
]
