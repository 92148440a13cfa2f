"""The registry's pure helpers: name checks, error classification, JSON bounds, history replay and trimming."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from mlcd.registry.client import (
    MAX_TEXT_CHARS,
    _accuracy,
    _clip,
    _entry_key,
    _is_unavailable,
    _ms_iso,
    _one_line,
    compact_json,
    replay,
    trim_history,
    validate_alias,
    validate_model_name,
    validate_run_id,
    validate_version,
)
from mlcd.registry.state import RolloutRecord, RolloutState

pytestmark = pytest.mark.unit


def test_names_are_checked_before_they_reach_a_search_filter() -> None:
    assert validate_model_name("mnist-cnn.v2_a") == "mnist-cnn.v2_a"
    for bad in ("", "-x", "a b", "x' or name='y", "a" * 257, 5):
        with pytest.raises(ValueError, match="invalid model name"):
            validate_model_name(bad)  # type: ignore[arg-type]
    assert validate_alias("champion") == "champion" and validate_alias("canary-2") == "canary-2"
    for bad in ("latest", "v3", "Champion", "", "9x", None):
        with pytest.raises(ValueError, match="invalid alias"):
            validate_alias(bad)  # type: ignore[arg-type]
    assert validate_alias("v3a") == "v3a"  # only v<N> is MLflow's own
    assert validate_version(7) == "7" and validate_version("12") == "12"
    for bad in (0, "0", "01", "-1", "1.0", "x"):
        with pytest.raises(ValueError, match="invalid model version"):
            validate_version(bad)
    assert validate_run_id("abc_DEF-123") == "abc_DEF-123"
    for bad in ("", "a'b", "a" * 65, None):
        with pytest.raises(ValueError, match="invalid MLflow run id"):
            validate_run_id(bad)  # type: ignore[arg-type]


def test_unavailable_means_transport_failure_or_5xx_only() -> None:
    assert _is_unavailable(requests.exceptions.ConnectionError("refused"))
    assert _is_unavailable(ConnectionRefusedError()) and _is_unavailable(TimeoutError())
    assert _is_unavailable(Exception("API request to http://x/api failed with exception HTTPConnectionPool"))
    assert _is_unavailable(Exception("API request to endpoint failed with error code 503 != 200"))
    assert not _is_unavailable(Exception("API request to endpoint failed with error code 404 != 200"))
    assert not _is_unavailable(Exception("API request to x"))  # both phrases are needed
    assert not _is_unavailable(Exception("failed with exception"))
    assert not _is_unavailable(ValueError("RESOURCE_DOES_NOT_EXIST"))


def test_one_line_names_the_cause() -> None:
    assert _one_line(Exception("HTTPConnectionPool(...): Max retries exceeded ... Connection refused')")) == (
        "Connection refused")
    assert _one_line(Exception("read: Read timed out. (read timeout=10)")) == "Read timed out"
    assert _one_line(Exception("API request failed with error code 502 != 200")) == "HTTP 502"
    assert _one_line(Exception("first line\nsecond")) == "first line"
    assert _one_line(Exception("x" * 500)) == "x" * 148 + "…(clipped)"
    assert _one_line(KeyError()) == "KeyError"


def test_clip_and_compact_json_keep_tags_bounded() -> None:
    assert _clip("short") == "short" and _clip("a" * MAX_TEXT_CHARS) == "a" * MAX_TEXT_CHARS
    clipped = _clip("a" * (MAX_TEXT_CHARS + 1))
    assert len(clipped) <= MAX_TEXT_CHARS and clipped.endswith("…(clipped)")
    assert compact_json({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'
    assert compact_json({"a": 1}, limit=7) == '{"a":1}'  # exactly at the limit: unchanged
    big = compact_json({"k": "v" * 500}, limit=100)
    assert len(big) <= 100 + 30 and json.loads(big)["clipped"] is True
    assert json.loads(big)["head"] == compact_json({"k": "v" * 500})[:60]


def test_entry_keys_sort_as_time() -> None:
    a, b = _entry_key(999), _entry_key(1_000)
    assert a.startswith("mlcd.h.0000000000999.") and b.startswith("mlcd.h.0000000001000.") and a < b
    assert _entry_key(5) != _entry_key(5)  # two writers in the same ms stay apart


def test_replay_starts_at_registered_and_keeps_events() -> None:
    entries: list[tuple[str, dict[str, Any]]] = [
        ("k3", {"from": "registered", "to": "canary"}),
        ("k1", {"to": "champion"}),  # a first entry that is not "registered" is not a start
        ("k2", {"to": "registered"}),
        ("k4", {"event": "canary_step"}),
        ("k5", {"from": "canary", "to": "bogus"}),  # unknown state: dropped
        ("k6", {"from": "canary", "to": "registered"}),  # illegal move: dropped
        ("k7", {"from": "canary", "to": "champion"}),
    ]
    state, accepted = replay(entries)
    assert state is RolloutState.CHAMPION
    assert [e.get("to", e.get("event")) for e in accepted] == ["registered", "canary", "canary_step", "champion"]
    assert replay([]) == (RolloutState.REGISTERED, [])
    assert replay([("k", {"event": "x"})]) == (RolloutState.REGISTERED, [{"event": "x"}])


def test_trim_history_drops_plain_events_first_then_old_transitions() -> None:
    first = {"to": "registered", "why": "x" * 40}
    moves = [{"from": "registered", "to": "canary", "why": "y" * 40}, {"from": "canary", "to": "champion"}]
    events = [{"event": f"step{i}", "pad": "z" * 40} for i in range(3)]
    entries = [first, events[0], moves[0], events[1], events[2], moves[1]]
    assert trim_history(entries, limit=10_000) == entries
    no_events = trim_history(entries, limit=len(compact_json([first, *moves])))
    assert no_events == [first, *moves]  # every plain event went before any transition
    tight = trim_history(entries, limit=len(compact_json([first, moves[1]])))
    assert tight == [first, moves[1]]  # the oldest transition after the first goes next
    assert trim_history([first], limit=5) == [first]  # never below one entry


def test_ms_iso_and_accuracy_readers() -> None:
    assert _ms_iso(None) is None and _ms_iso(0) is None
    assert _ms_iso(1_700_000_000_000) == "2023-11-14T22:13:20Z"
    assert _accuracy('{"accuracy": 0.97, "n": 10}') == 0.97
    assert _accuracy(None) is None and _accuracy("") is None and _accuracy('{"n": 1}') is None
    assert _accuracy("not json") is None and _accuracy("[1]") is None


def test_record_views() -> None:
    rec = RolloutRecord(version="3", state=RolloutState.CANARY, history=[
        {"to": "registered"}, {"event": "promote_started", "d": {"n": 1}}, {"from": "registered", "to": "canary"},
        {"event": "promote_started", "d": {"n": 2}},
    ], tags={"k": "v"})
    assert [e["to"] for e in rec.transitions()] == ["registered", "canary"]
    assert rec.last_event("promote_started") == {"event": "promote_started", "d": {"n": 2}}
    assert rec.last_event("rollback_started") is None
    assert rec.to_dict()["state"] == "canary" and rec.to_dict()["version"] == "3"
