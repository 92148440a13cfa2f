"""The rule for how a run ends when the platform correctly says no: a refusal is a decision, not a fault.

A quarantined batch, a gate rejection and a rollback (by the guard, or the canary's own analysis) are the platform
working: the refusing task is **skipped** with the reason as its message (first line of its log), so its
downstream tasks are skipped and Airflow shows the run as a success with a skipped task, never a red run. A real
fault (a server down, a bug, a timeout, a refused traffic move) still **fails** the task. The reason is in the
task log, the ledger or the rollout record, and on the mlcd page's "needs attention" list.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import NoReturn

log = logging.getLogger(__name__)


class Refusal(str, Enum):
    """Which correct "no" ended a task (written in the log line; never parsed back)."""

    QUARANTINED = "quarantined"  # a new batch failed its expectations: nothing is trained on it
    GATE_REJECTED = "gate_rejected"  # the challenger did not beat the champion: the champion is untouched
    ROLLED_BACK = "rolled_back"  # the guard (or the canary's own analysis) took the version out of service

    def __str__(self) -> str:
        return self.value


def refuse(kind: Refusal, message: str) -> NoReturn:
    """End the task as skipped (a correct refusal), saying which refusal and why."""
    from airflow.sdk.exceptions import AirflowSkipException

    log.warning("refused (%s): %s", kind.value, message)
    raise AirflowSkipException(f"refused ({kind.value}): {message}")
