"""The ledger, the drift cooldown and the guard checkpoint in the SQL database at MLCD_LEDGER_URL (SQLite here).

The same concurrency scenarios run on a real Postgres server in tests/integration/test_sql_state_postgres.py.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.sqlconcurrency import HASHES, assert_one_winner_per_batch, run_processes, run_threads

pytestmark = pytest.mark.unit


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state' / 'ledger.sqlite'}"


def test_concurrent_processes_start_see_decide_and_signal_exactly_once(url: str) -> None:
    """Separate processes, like Airflow workers: a fresh database, then the same batches, then the cooldown."""
    n = 4
    started, decided, first, within, after = run_processes(
        [
            ("first_start", None),  # all create the schema at once on a fresh database
            ("see_and_decide", None),
            ("claim", [(1000.0, 3600.0)] * n),
            ("claim", [(1000.0 + 3599, 3600.0)] * n),
            ("claim", [(1000.0 + 3601, 3600.0)] * n),
        ],
        url,
        n,
    )
    assert all(started.values()) and len(started) == n
    assert_one_winner_per_batch(decided, url)
    assert sorted(first.values()) == [False] * (n - 1) + [True]
    assert not any(within.values())  # still within the cooldown: nobody
    assert sorted(after.values()) == [False] * (n - 1) + [True]


def test_concurrent_threads_see_and_decide_each_batch_exactly_once(url: str) -> None:
    results = run_threads("see_and_decide", url, 12)
    assert_one_winner_per_batch(results, url)


def test_exactly_one_of_many_threads_signals_drift_per_cooldown(url: str) -> None:
    first = run_threads("claim", url, 8, [(1000.0, 3600.0)] * 8)
    assert sorted(first.values()) == [False] * 7 + [True]
    within = run_threads("claim", url, 8, [(1000.0 + 3599, 3600.0)] * 8)
    assert not any(within.values())
    after = run_threads("claim", url, 8, [(1000.0 + 3601, 3600.0)] * 8)
    assert sorted(after.values()) == [False] * 7 + [True]


def test_a_guard_checkpoint_is_only_replaced_by_a_state_with_more_polls(url: str) -> None:
    from mlcd.statestore import StateStore

    n = 10
    results = run_threads("checkpoint", url, n, [(polls,) for polls in range(1, n + 1)])
    saved = StateStore(url).get("guard/3-100.000")
    assert saved is not None and saved["polls"] == n  # the furthest state wins whatever the order
    assert results[f"t{n - 1}"] is True
    assert StateStore(url).replace_if("guard/3-100.000", {"polls": 4}, lambda new, old: new["polls"] > old["polls"]) is False
    assert StateStore(url).get("guard/3-100.000") == saved


def test_many_threads_starting_on_a_fresh_database_create_the_schema_once(url: str) -> None:
    assert all(run_threads("first_start", url, 8).values())
    from mlcd.data.ledger import Ledger

    assert {r.name for r in Ledger(url).list()} == {f"t{i}" for i in range(8)}


def test_compare_and_set_refuses_a_stale_version(url: str) -> None:
    from mlcd.statestore import StateStore

    store = StateStore(url)
    assert store.read("k").version == 0 and store.get("k") is None
    assert store.compare_and_set("k", 0, {"a": 1}) is True
    assert store.compare_and_set("k", 0, {"a": 2}) is False  # someone created it first
    entry = store.read("k")
    assert entry.value == {"a": 1} and entry.version == 1 and entry.updated_at > 0
    assert store.compare_and_set("k", 1, {"a": 3}) is True
    assert store.compare_and_set("k", 1, {"a": 4}) is False  # read version 1, but it is at 2 now
    store.put("k", {"a": 5})
    assert store.read("k").value == {"a": 5} and store.read("k").version == 3
    store.delete("k")
    assert store.get("k") is None


def test_the_ledger_follows_mlcd_ledger_url_when_callers_pass_the_default_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """intake, the landing sensor and the CLI pass ``settings.ledger_path``: that means "the configured ledger"."""
    from mlcd.data.ledger import Ledger
    from mlcd.settings import get_settings

    monkeypatch.setenv("MLCD_HOME", str(tmp_path / "home"))
    elsewhere = tmp_path / "db" / "shared.sqlite"
    monkeypatch.setenv("MLCD_LEDGER_URL", f"sqlite:///{elsewhere}")
    ledger = Ledger(get_settings().ledger_path)
    assert ledger.url == f"sqlite:///{elsewhere}" and ledger.path == elsewhere
    assert ledger.see("a" * 64, "x.npz", "/landing/x.npz", 3)
    assert not (tmp_path / "home" / "ledger.sqlite").exists()
    assert Ledger().get("a" * 64) is not None  # Ledger() is the configured ledger too
    other = Ledger(tmp_path / "other.sqlite")  # any other path is that file
    assert other.get("a" * 64) is None and other.path == (tmp_path / "other.sqlite").resolve()


def test_a_ledger_file_written_before_sqlalchemy_still_reads(tmp_path: Path) -> None:
    """The tables keep their names and columns: an existing .mlcd/ledger.sqlite keeps its history."""
    from mlcd.data.ledger import ACCEPTED, Ledger

    path = tmp_path / "ledger.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE batches (batch_hash TEXT PRIMARY KEY, name TEXT NOT NULL, source_uri TEXT NOT NULL,"
        " size_bytes INTEGER NOT NULL, state TEXT NOT NULL, reason TEXT, details TEXT, n_images INTEGER,"
        " stored_path TEXT, first_seen TEXT NOT NULL, decided_at TEXT, run_id TEXT);"
        "CREATE TABLE sightings (source_uri TEXT NOT NULL, size_bytes INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,"
        " batch_hash TEXT NOT NULL, noted_at TEXT NOT NULL, PRIMARY KEY (source_uri, size_bytes, mtime_ns));"
    )
    conn.execute("INSERT INTO batches VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                 (HASHES[0], "old.npz", "/l/old.npz", 9, ACCEPTED, "passed", json.dumps({"k": 1}), 5, "/b/old.npz",
                  "2026-01-01T00:00:00+00:00", "2026-01-01T00:01:00+00:00", "r1"))
    conn.commit()
    conn.close()
    ledger = Ledger(path)
    old = ledger.get(HASHES[0])
    assert old is not None and old.state == ACCEPTED and old.details == {"k": 1} and old.n_images == 5
    assert ledger.see(HASHES[0], "again.npz", "/l/again.npz", 9) is False
    ledger.note_sighting("/l/old.npz", 9, 123, HASHES[0])
    ledger.note_sighting("/l/old.npz", 9, 123, HASHES[1])  # noted again: replaced, not duplicated
    assert ledger.hash_seen_as("/l/old.npz", 9, 123) == HASHES[1]
    ledger.forget_sightings("/l/old.npz")
    assert ledger.hash_seen_as("/l/old.npz", 9, 123) is None


def test_the_drift_cooldown_lives_in_the_database_not_under_mlcd_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlcd.guard.signals import should_signal
    from mlcd.statestore import DRIFT_SIGNAL_KEY, StateStore

    monkeypatch.setenv("MLCD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLCD_LEDGER_URL", f"sqlite:///{tmp_path / 'db.sqlite'}")
    assert should_signal(60.0, now=500.0) is True
    assert should_signal(60.0, now=530.0) is False
    assert StateStore().get(DRIFT_SIGNAL_KEY) == {"at": 500.0}
    assert should_signal(60.0, now=561.0) is True
    assert not (tmp_path / "home" / "drift").exists()
