"""The ledger, the state store and the registry lease on a real PostgreSQL server (tests/pgserver.py).

The same concurrency scenarios as tests/unit/test_sql_state.py (SQLite), here with processes and threads
racing on Postgres rows: the configuration of a cluster (``MLCD_LEDGER_URL=postgresql+psycopg2://...``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.pgserver import PostgresServer
from tests.sqlconcurrency import assert_one_winner_per_batch, run_processes, run_threads

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture
def url(pg: PostgresServer) -> str:
    """A fresh, empty database per test: the first process to start creates the schema."""
    return pg.create_database(f"t_{uuid.uuid4().hex[:12]}")


def test_concurrent_processes_start_see_decide_and_signal_exactly_once(url: str) -> None:
    n = 6
    started, decided, first, within, after = run_processes(
        [
            ("first_start", None),  # CREATE TABLE races: "duplicate table" / pg_type unique violations
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
    assert not any(within.values())
    assert sorted(after.values()) == [False] * (n - 1) + [True]


def test_concurrent_threads_see_and_decide_each_batch_exactly_once(url: str) -> None:
    assert all(run_threads("first_start", url, 8).values())
    assert_one_winner_per_batch(run_threads("see_and_decide", url, 12), url)


def test_exactly_one_thread_signals_per_cooldown_and_checkpoints_only_advance(url: str) -> None:
    from mlcd.statestore import StateStore

    first = run_threads("claim", url, 10, [(50.0, 60.0)] * 10)
    assert sorted(first.values()) == [False] * 9 + [True]
    assert not any(run_threads("claim", url, 10, [(109.0, 60.0)] * 10).values())
    assert sorted(run_threads("claim", url, 10, [(111.0, 60.0)] * 10).values()) == [False] * 9 + [True]
    run_threads("checkpoint", url, 10, [(polls,) for polls in range(1, 11)])
    saved = StateStore(url).get("guard/3-100.000")
    assert saved is not None and saved["polls"] == 10


def test_the_ledger_api_and_the_lease_on_postgres(url: str, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Every Ledger method through MLCD_LEDGER_URL, and the lease sharing the same database and engine."""
    from mlcd import sql
    from mlcd.data.ledger import ACCEPTED, LANDED, QUARANTINED, Ledger
    from mlcd.registry import lease
    from mlcd.settings import get_settings

    monkeypatch.setenv("MLCD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLCD_LEDGER_URL", url)
    ledger = Ledger(get_settings().ledger_path)  # what intake and the CLI pass: follows MLCD_LEDGER_URL
    assert ledger.url == url and ledger.path is None
    assert ledger.see("h1", "bad\udcff.npz", "/landing/bad\udcff.npz", 10)  # undecodable name: stored printable
    assert ledger.see("h2", "b.npz", "/landing/b.npz", 20)
    assert not ledger.see("h1", "again.npz", "/landing/again.npz", 10)
    record = ledger.decide("h1", ACCEPTED, reason="passed", details={"rows": 3}, n_images=3, stored_path="s3://b/h1")
    assert record.state == ACCEPTED and record.details == {"rows": 3} and record.name.startswith("bad")
    assert ledger.decide("h1", QUARANTINED, reason="late").state == ACCEPTED  # the first decision stays
    with pytest.raises(KeyError):
        ledger.decide("nope", QUARANTINED, reason="x")
    assert [r.batch_hash for r in ledger.list(LANDED)] == ["h2"]
    assert ledger.known_hashes() == {"h1", "h2"}
    ledger.note_sighting("/landing/b.npz", 20, 7, "h2")
    ledger.note_sighting("/landing/b.npz", 20, 7, "h3")
    assert ledger.hash_seen_as("/landing/b.npz", 20, 7) == "h3"
    ledger.forget_sightings("/landing/b.npz")
    assert ledger.hash_seen_as("/landing/b.npz", 20, 7) is None
    with lease.hold("registry:m", wait_s=5) as held:
        assert held.url == url and lease.read_lease("registry:m")["held"]  # type: ignore[index]
        assert lease.try_acquire("registry:m", "someone-else") is None
    assert sql.engine(url) is sql.engine(url)  # one engine per URL per process, shared by all three
    assert sql.engine(url).pool._pre_ping  # type: ignore[attr-defined]


def test_the_schema_survives_the_create_table_race(pg: PostgresServer) -> None:
    """Plain ``create_all`` from several engines at once fails on Postgres (a unique violation on ``pg_type``);
    :func:`mlcd.sql.ensure_schema` must turn that race into success for every caller."""
    import threading

    from sqlalchemy import create_engine, inspect
    from sqlalchemy.exc import DBAPIError

    from mlcd import sql
    from mlcd.data import ledger
    from mlcd.statestore import _META as STATE_META

    for k in range(3):
        url = pg.create_database(f"race_{k}_{uuid.uuid4().hex[:8]}")
        barrier = threading.Barrier(8)
        errors: list[BaseException] = []

        def first_start(url: str = url, barrier: threading.Barrier = barrier, errors: list[BaseException] = errors) -> None:
            eng = create_engine(url)  # a fresh engine each: as separate processes would
            try:
                barrier.wait(30)
                sql.ensure_schema(eng, ledger._META)
                sql.ensure_schema(eng, STATE_META)
            except (DBAPIError, threading.BrokenBarrierError) as exc:
                errors.append(exc)
            finally:
                eng.dispose()

        threads = [threading.Thread(target=first_start) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        eng = create_engine(url)
        assert {"batches", "sightings", "mlcd_state"} <= set(inspect(eng).get_table_names())
        eng.dispose()
