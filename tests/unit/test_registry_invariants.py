"""The registry invariants as pure functions: what ``mlcd status`` reports and what ``mlcd reconcile`` aims at."""

from __future__ import annotations

from typing import Any

import pytest

from mlcd.registry.reconcile import check, expected_previous, restore_target
from mlcd.registry.state import RolloutRecord, RolloutState
from mlcd.registry.tags import ALIASES, Alias, Event, Violation

pytestmark = pytest.mark.unit
S = RolloutState


def _rec(version: str, *moves: tuple[str, str | None, str], events: list[dict[str, Any]] | None = None) -> RolloutRecord:
    """A record from ``(time, from, to)`` moves (plus events), replayed as the journal would store them."""
    history: list[dict[str, Any]] = [{"t": "2026-01-01T00:00:00.000Z", "to": "registered"}]
    state = S.REGISTERED
    for t, src, dst in moves:
        history.append({"t": t, "from": src, "to": dst})
        state = S(dst)
    for e in events or []:
        history.append(e)
    history.sort(key=lambda e: e["t"])
    return RolloutRecord(version=version, state=state, history=history)


def _healthy() -> tuple[dict[str, str], dict[str, RolloutRecord]]:
    """v1 champion, then v2 promoted (v1 previous), v3 in canary."""
    records = {
        "1": _rec("1", ("2026-01-02T00:00:00.000Z", "registered", "champion"),
                  ("2026-01-03T00:00:00.000Z", "champion", "previous")),
        "2": _rec("2", ("2026-01-02T12:00:00.000Z", "registered", "canary"),
                  ("2026-01-03T00:00:00.000Z", "canary", "champion")),
        "3": _rec("3", ("2026-01-04T00:00:00.000Z", "registered", "canary")),
    }
    return {"champion": "2", "previous": "1", "canary": "3"}, records


def test_vocabulary_is_the_stored_strings() -> None:
    assert ALIASES == ("champion", "canary", "previous")
    assert Alias.CHAMPION == "champion" and Event.PROMOTE_STARTED == "promote_started"
    assert f"{Violation.CHAMPION_RETIRED}" == "champion_retired"


def test_a_consistent_registry_has_no_findings() -> None:
    aliases, records = _healthy()
    assert check(aliases, records) == []
    assert expected_previous("2", records) == "1"


def test_champion_on_a_rolled_back_version_is_found_and_restored_from_the_recorded_intent() -> None:
    aliases, records = _healthy()
    records["2"] = _rec(
        "2", ("2026-01-02T12:00:00.000Z", "registered", "canary"),
        ("2026-01-05T00:00:00.000Z", "canary", "rolled_back"),
        events=[{"t": "2026-01-03T00:00:00.000Z", "event": "promote_started",
                 "d": {"old_champion": "1", "old_previous": None}}],
    )
    found = check(aliases, records)
    assert [f.violation for f in found][0] is Violation.CHAMPION_RETIRED
    assert found[0].version == "2" and "rolled_back" in found[0].message
    assert restore_target("2", aliases, records) == "1"


def test_a_half_done_promotion_is_a_champion_record_violation() -> None:
    aliases, records = _healthy()
    aliases["champion"] = "3"  # the alias moved (the commit) but the records did not follow
    found = check(aliases, records)
    assert found[0].violation is Violation.CHAMPION_RECORD and found[0].version == "3"


def test_two_recorded_champions_and_no_alias() -> None:
    aliases, records = _healthy()
    del aliases["champion"]
    found = check(aliases, records)
    assert found[0].violation is Violation.NO_CHAMPION and found[0].version == "2"
    records["1"] = _rec("1", ("2026-01-02T00:00:00.000Z", "registered", "champion"))
    aliases["champion"] = "2"
    aliases.pop("previous")
    kinds = {f.violation for f in check(aliases, records)}
    assert Violation.MANY_CHAMPIONS in kinds


def test_canary_alias_on_a_rejected_version() -> None:
    aliases, records = _healthy()
    records["3"] = _rec("3", ("2026-01-04T00:00:00.000Z", "registered", "rejected"))
    found = check(aliases, records)
    assert [f.violation for f in found] == [Violation.CANARY_RETIRED]


def test_previous_must_follow_the_history() -> None:
    aliases, records = _healthy()
    records["4"] = _rec("4", ("2026-01-01T06:00:00.000Z", "registered", "champion"),
                        ("2026-01-02T00:00:00.000Z", "champion", "previous"))
    aliases["previous"] = "4"  # v4 was champion before v1, not just before v2
    found = check(aliases, records)
    assert found and all(f.violation is Violation.PREVIOUS_HISTORY for f in found)
    assert "should be 1" in found[0].message
    # After a rollback restored v1 (v2 rolled back), nothing is "previous" any more.
    records["2"] = _rec("2", ("2026-01-02T12:00:00.000Z", "registered", "canary"),
                        ("2026-01-03T00:00:00.000Z", "canary", "champion"),
                        ("2026-01-06T00:00:00.000Z", "champion", "rolled_back"))
    records["1"] = _rec("1", ("2026-01-02T00:00:00.000Z", "registered", "champion"),
                        ("2026-01-03T00:00:00.000Z", "champion", "previous"),
                        ("2026-01-06T00:00:00.000Z", "previous", "champion"))
    del records["4"]
    assert expected_previous("1", records) is None
    assert check({"champion": "1"}, records) == []


def test_an_unfinished_intent_in_a_free_lease_is_reported() -> None:
    aliases, records = _healthy()
    row = {"owner": None, "held": False, "intent": {"op": "promote", "args": {"version": "3"}}}
    found = check(aliases, records, row)
    assert found[0].violation is Violation.STALE_INTENT and "promote" in found[0].message
    assert check(aliases, records, {**row, "held": True}) == []  # a live holder is still working on it
