"""The rollout record's state machine: pure, so the canary task, the guard and the CLI agree on it.

Each model version has exactly one state. Allowed moves::

    registered -> canary -> champion -> previous -> archived
    registered -> rejected                 (the gate said no)
    registered -> champion                 (bootstrap: the very first model, nothing to canary against)
    canary     -> rolled_back              (the guard caught it during the rollout)
    champion   -> rolled_back              (caught in the bake period; previous is restored)
    previous   -> champion                 (restored by a rollback, or promoted back by hand)

``archived`` is where a ``previous`` version goes when a newer one takes the ``previous`` alias.
``rejected``, ``rolled_back`` and ``archived`` are final.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class RolloutState(str, Enum):
    REGISTERED = "registered"
    CANARY = "canary"
    CHAMPION = "champion"
    PREVIOUS = "previous"
    ARCHIVED = "archived"
    REJECTED = "rejected"
    ROLLED_BACK = "rolled_back"

    def __str__(self) -> str:
        return self.value


S = RolloutState
TRANSITIONS: dict[RolloutState, frozenset[RolloutState]] = {
    S.REGISTERED: frozenset({S.CANARY, S.REJECTED, S.CHAMPION}),
    S.CANARY: frozenset({S.CHAMPION, S.ROLLED_BACK}),
    S.CHAMPION: frozenset({S.PREVIOUS, S.ROLLED_BACK}),
    S.PREVIOUS: frozenset({S.CHAMPION, S.ARCHIVED}),
    S.ARCHIVED: frozenset(),
    S.REJECTED: frozenset(),
    S.ROLLED_BACK: frozenset(),
}
FINAL_STATES = frozenset(s for s, targets in TRANSITIONS.items() if not targets)


class IllegalTransitionError(ValueError):
    """A move the state machine does not allow (e.g. ``rejected -> champion``)."""


def parse_state(value: str | RolloutState) -> RolloutState:
    try:
        return RolloutState(value)
    except ValueError:
        raise ValueError(f"unknown rollout state {value!r}; known: {[s.value for s in S]}") from None


def is_allowed(from_state: str | RolloutState, to_state: str | RolloutState) -> bool:
    return parse_state(to_state) in TRANSITIONS[parse_state(from_state)]


def check_transition(from_state: str | RolloutState, to_state: str | RolloutState) -> RolloutState:
    """Return the target state, or raise :class:`IllegalTransitionError` naming the allowed moves."""
    src, dst = parse_state(from_state), parse_state(to_state)
    if dst not in TRANSITIONS[src]:
        allowed = sorted(s.value for s in TRANSITIONS[src]) or ["none: it is final"]
        raise IllegalTransitionError(f"illegal rollout transition {src.value} -> {dst.value}; allowed: {allowed}")
    return dst


@dataclass
class RolloutRecord:
    """One version's state and its history (oldest first). Entries are compact dicts, see ``HistoryEntry``."""

    version: str
    state: RolloutState
    history: list[dict[str, Any]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)

    def transitions(self) -> list[dict[str, Any]]:
        return [e for e in self.history if "to" in e]

    def last_event(self, event: str) -> dict[str, Any] | None:
        for entry in reversed(self.history):
            if entry.get("event") == event:
                return entry
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "state": self.state.value, "history": list(self.history)}
