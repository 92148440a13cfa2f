"""The rollout state machine refuses every move it does not list, and the replay ignores lost races."""

from __future__ import annotations

import itertools

import pytest

from mlcd.registry.client import replay, trim_history
from mlcd.registry.state import (
    FINAL_STATES,
    IllegalTransitionError,
    RolloutState,
    check_transition,
    is_allowed,
)

pytestmark = pytest.mark.unit
S = RolloutState

LEGAL = {
    (S.REGISTERED, S.CANARY),
    (S.REGISTERED, S.REJECTED),
    (S.REGISTERED, S.CHAMPION),
    (S.CANARY, S.CHAMPION),
    (S.CANARY, S.ROLLED_BACK),
    (S.CHAMPION, S.PREVIOUS),
    (S.CHAMPION, S.ROLLED_BACK),
    (S.PREVIOUS, S.CHAMPION),
    (S.PREVIOUS, S.ARCHIVED),
}


@pytest.mark.parametrize("src,dst", list(itertools.product(S, S)))
def test_only_listed_transitions_are_allowed(src: RolloutState, dst: RolloutState) -> None:
    if (src, dst) in LEGAL:
        assert check_transition(src, dst) is dst
    else:
        assert not is_allowed(src, dst)
        with pytest.raises(IllegalTransitionError, match=f"{src.value} -> {dst.value}"):
            check_transition(src, dst)


def test_named_illegal_moves() -> None:
    for src, dst in [("rejected", "champion"), ("rolled_back", "canary"), ("registered", "previous"),
                     ("canary", "registered"), ("champion", "canary")]:
        with pytest.raises(IllegalTransitionError):
            check_transition(src, dst)


def test_final_states() -> None:
    assert FINAL_STATES == {S.REJECTED, S.ROLLED_BACK, S.ARCHIVED}
    with pytest.raises(IllegalTransitionError, match="final"):
        check_transition("rejected", "canary")


def test_unknown_state() -> None:
    with pytest.raises(ValueError, match="unknown rollout state"):
        check_transition("registered", "production")


def test_replay_drops_the_loser_of_a_race() -> None:
    entries = [
        ("mlcd.h.0000000000001.aa", {"t": "1", "to": "registered"}),
        ("mlcd.h.0000000000002.aa", {"t": "2", "from": "registered", "to": "canary"}),
        ("mlcd.h.0000000000003.aa", {"t": "3", "event": "canary_step", "d": {"weight": 5}}),
        # guard and canary task both moved from canary; the earlier key wins
        ("mlcd.h.0000000000004.bb", {"t": "4", "from": "canary", "to": "rolled_back"}),
        ("mlcd.h.0000000000004.cc", {"t": "4", "from": "canary", "to": "champion"}),
    ]
    state, history = replay(reversed(entries))
    assert state is S.ROLLED_BACK
    assert [e.get("to", e.get("event")) for e in history] == ["registered", "canary", "canary_step", "rolled_back"]


def test_trim_history_keeps_transitions_and_fits() -> None:
    history = [{"to": "registered"}] + [{"event": "canary_step", "d": "x" * 100} for _ in range(50)] + [
        {"from": "registered", "to": "canary"}
    ]
    trimmed = trim_history(history, limit=1000)
    assert len(str(trimmed)) < 1200
    assert trimmed[0] == {"to": "registered"} and trimmed[-1]["to"] == "canary"
    assert trim_history(history, limit=1000) == trimmed  # deterministic
