"""The registry's vocabulary: every alias, tag key, rollout state, history event and repair reason mlcd writes.

One module so a reader (the guard, the canary task, the CLI, the overview page) and a writer agree on spelling;
the values are str Enums, so they compare equal to the plain strings already stored in MLflow.
Nothing here touches MLflow.
"""

from __future__ import annotations

from enum import Enum

from mlcd.registry.state import RolloutState


class Alias(str, Enum):
    """The registered-model aliases serving and the rollout move (MLflow stores the plain value)."""

    CHAMPION = "champion"
    CANARY = "canary"
    PREVIOUS = "previous"

    def __str__(self) -> str:
        return self.value


class Event(str, Enum):
    """History entries without a state change (``{"event": ...}`` in the rollout record)."""

    PROMOTE_STARTED = "promote_started"  # intent of a promotion: the aliases before it, so a re-run converges
    ROLLBACK_STARTED = "rollback_started"  # intent of a rollback: the version it restores
    RECONCILED = "reconciled"  # a repair made by :func:`mlcd.registry.reconcile.reconcile`
    CANARY_STARTED = "canary_started"
    CANARY_STEP = "canary_step"
    CANARY_STEP_HELD = "canary_step_held"  # a paused rollout held its weight through a window
    CANARY_UNDECIDED = "canary_undecided"
    PAUSED = "paused"  # mlcd pause: the canary task holds its weight until a later ``resumed``
    RESUMED = "resumed"
    HOLDBACK_STARTED = "holdback_started"  # promoted with the previous champion kept on a share (the control)
    HOLDBACK_RELEASED = "holdback_released"  # the bake ended: the previous champion's share went to 0

    def __str__(self) -> str:
        return self.value


class Violation(str, Enum):
    """Why the registry is inconsistent (reported by ``mlcd status``, repaired by ``mlcd reconcile``)."""

    NO_CHAMPION = "no_champion"  # versions were champion once, but no alias holds one now
    MANY_CHAMPIONS = "many_champions"  # more than one version's record says champion
    CHAMPION_RETIRED = "champion_retired"  # the champion alias is on a rolled_back/rejected/archived version
    CHAMPION_RECORD = "champion_record"  # the alias holder's record is not champion (a half-done promotion)
    PREVIOUS_HISTORY = "previous_history"  # previous is not the version that was champion before this one
    CANARY_RETIRED = "canary_retired"  # the canary alias is on a rejected/rolled_back version
    ALIAS_STATE = "alias_state"  # an alias and its holder's record disagree in another way
    STALE_INTENT = "stale_intent"  # a move recorded in the lease table never finished

    def __str__(self) -> str:
        return self.value


ALIASES: tuple[str, ...] = tuple(a.value for a in Alias)
# The alias that a version in this state holds (the record and the aliases must agree).
STATE_ALIAS: dict[RolloutState, str] = {
    RolloutState.CANARY: Alias.CANARY.value,
    RolloutState.CHAMPION: Alias.CHAMPION.value,
    RolloutState.PREVIOUS: Alias.PREVIOUS.value,
}

# Version tags owned by the rollout record (never set through ``set_version_tags``).
TAG_STATE = "mlcd.state"
TAG_HISTORY = "mlcd.history"
TAG_ENTRY_PREFIX = "mlcd.h."
# Version tags that explain a version.
TAG_RUN_ID = "mlcd.run_id"
TAG_VERDICT = "mlcd.verdict"
TAG_REASONS = "mlcd.reasons"
TAG_METRICS = "mlcd.metrics"
TAG_P_VALUE = "mlcd.p_value"
TAG_SNAPSHOT = "mlcd.snapshot_id"
TAG_SNAPSHOT_PATH = "mlcd.snapshot_path"
TAG_DAG_RUN = "mlcd.dag_run_id"
TAG_PAGE_URL = "mlcd.page_url"  # the version's section on the operator's page (MLflow -> page link)
TAG_CODE_VERSION = "mlcd.code_version"
TAG_DISCORDANT = "mlcd.discordant"
TAG_CHAMPION_AT_EVAL = "mlcd.champion_at_eval"
TAG_FORCED = "mlcd.forced"
TAG_PROMOTED_BY = "mlcd.promoted_by"
TAG_PROMOTED_AT = "mlcd.promoted_at"
TAG_ROLLBACK_REASON = "mlcd.rollback_reason"
TAG_ROLLBACK_EVIDENCE = "mlcd.rollback_evidence"
# Written by a rollback (mlcd.rollout.actions).
TAG_ROLLED_BACK_BY = "mlcd.rolled_back_by"
TAG_ROLLED_BACK_AT = "mlcd.rolled_back_at"
TAG_ROLLBACK_CHECKS = "mlcd.rollback_checks"
# Written by reconcile: the last repair made on this version and when.
# Which snapshot and training params produced a version (mlcd.registry.task.train_fingerprint).
TAG_TRAIN_FINGERPRINT = "mlcd.train_fingerprint"
TAG_RECONCILED = "mlcd.reconciled"
TAG_RECONCILED_AT = "mlcd.reconciled_at"

RECORD_TAGS = frozenset({TAG_STATE, TAG_HISTORY})

# States whose version must hold no alias that serves traffic.
RETIRED_STATES = frozenset({RolloutState.ROLLED_BACK, RolloutState.REJECTED, RolloutState.ARCHIVED})


def is_record_tag(key: str) -> bool:
    """True for tags the rollout record owns (state, history view, history entries)."""
    return key in RECORD_TAGS or key.startswith(TAG_ENTRY_PREFIX)


__all__ = [
    "TAG_TRAIN_FINGERPRINT",
    "ALIASES",
    "RECORD_TAGS",
    "RETIRED_STATES",
    "STATE_ALIAS",
    "TAG_CHAMPION_AT_EVAL",
    "TAG_CODE_VERSION",
    "TAG_DAG_RUN",
    "TAG_DISCORDANT",
    "TAG_ENTRY_PREFIX",
    "TAG_FORCED",
    "TAG_HISTORY",
    "TAG_METRICS",
    "TAG_PAGE_URL",
    "TAG_PROMOTED_AT",
    "TAG_PROMOTED_BY",
    "TAG_P_VALUE",
    "TAG_REASONS",
    "TAG_RECONCILED",
    "TAG_RECONCILED_AT",
    "TAG_ROLLBACK_CHECKS",
    "TAG_ROLLBACK_EVIDENCE",
    "TAG_ROLLBACK_REASON",
    "TAG_ROLLED_BACK_AT",
    "TAG_ROLLED_BACK_BY",
    "TAG_RUN_ID",
    "TAG_SNAPSHOT",
    "TAG_SNAPSHOT_PATH",
    "TAG_STATE",
    "TAG_VERDICT",
    "Alias",
    "Event",
    "RolloutState",
    "Violation",
    "is_record_tag",
]
