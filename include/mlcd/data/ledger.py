"""The batch ledger: one row per landed batch, keyed by content hash, with its state and the reason for it.

Names and URIs are stored as printable text (:func:`mlcd.files.printable_name`): a landed file's name may hold
bytes that are not UTF-8, which SQLite would refuse. The ``sightings`` table remembers which content hash a file
had at a given size and mtime, so the landing watcher and ``collect`` list by stat and read a file only once.

States: ``landed`` (seen, not yet judged) → ``accepted`` or ``quarantined``. A decision is recorded once; a re-run
that judges the same bytes again finds the row and converges instead of adding another. SQLite keeps it atomic
across the watcher, the retrain run and the CLI.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlcd.files import printable_name

LANDED = "landed"
ACCEPTED = "accepted"
QUARANTINED = "quarantined"
STATES = (LANDED, ACCEPTED, QUARANTINED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    batch_hash   TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    source_uri   TEXT NOT NULL,
    size_bytes   INTEGER NOT NULL,
    state        TEXT NOT NULL,
    reason       TEXT,
    details      TEXT,
    n_images     INTEGER,
    stored_path  TEXT,
    first_seen   TEXT NOT NULL,
    decided_at   TEXT,
    run_id       TEXT
);
CREATE TABLE IF NOT EXISTS sightings (
    source_uri   TEXT NOT NULL,
    size_bytes   INTEGER NOT NULL,
    mtime_ns     INTEGER NOT NULL,
    batch_hash   TEXT NOT NULL,
    noted_at     TEXT NOT NULL,
    PRIMARY KEY (source_uri, size_bytes, mtime_ns)
);
"""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class BatchRecord:
    batch_hash: str
    name: str
    source_uri: str
    size_bytes: int
    state: str
    reason: str | None
    details: dict[str, Any]
    n_images: int | None
    stored_path: str | None
    first_seen: str
    decided_at: str | None
    run_id: str | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Ledger:
    """The SQLite ledger at ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            with conn:
                yield conn
        finally:
            conn.close()

    def see(self, batch_hash: str, name: str, source_uri: str, size_bytes: int) -> bool:
        """Record a landed batch; ``False`` when its content was seen before (under any name)."""
        with self._connect() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO batches (batch_hash, name, source_uri, size_bytes, state, first_seen) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (batch_hash, printable_name(name), printable_name(source_uri), size_bytes, LANDED, _now()),
            )
            return cur.rowcount == 1

    def decide(
        self,
        batch_hash: str,
        state: str,
        *,
        reason: str | None,
        details: dict[str, Any] | None = None,
        n_images: int | None = None,
        stored_path: str | None = None,
        run_id: str | None = None,
    ) -> BatchRecord:
        """Record the verdict on a batch. A batch already decided keeps its first decision."""
        if state not in (ACCEPTED, QUARANTINED):
            raise ValueError(f"cannot decide a batch as {state!r}")
        with self._connect() as conn:
            conn.execute(
                "UPDATE batches SET state=?, reason=?, details=?, n_images=?, stored_path=?, decided_at=?, run_id=? "
                "WHERE batch_hash=? AND state=?",
                (
                    state,
                    reason,
                    json.dumps(details or {}),
                    n_images,
                    stored_path,
                    _now(),
                    run_id,
                    batch_hash,
                    LANDED,
                ),
            )
        record = self.get(batch_hash)
        if record is None:
            raise KeyError(f"batch {batch_hash} was never seen")
        return record

    def get(self, batch_hash: str) -> BatchRecord | None:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM batches WHERE batch_hash=?", (batch_hash,)).fetchone()
        return _record(row) if row else None

    def list(self, state: str | None = None) -> list[BatchRecord]:
        query = "SELECT * FROM batches"
        args: tuple[str, ...] = ()
        if state is not None:
            query, args = query + " WHERE state=?", (state,)
        with self._connect() as conn:
            rows = conn.execute(query + " ORDER BY first_seen, batch_hash", args).fetchall()
        return [_record(row) for row in rows]

    def hash_seen_as(self, source_uri: str, size_bytes: int, mtime_ns: int) -> str | None:
        """The content hash noted for this file at this size and mtime, if it was read before."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT batch_hash FROM sightings WHERE source_uri=? AND size_bytes=? AND mtime_ns=?",
                (printable_name(source_uri), size_bytes, mtime_ns),
            ).fetchone()
        return str(row[0]) if row else None

    def note_sighting(self, source_uri: str, size_bytes: int, mtime_ns: int, batch_hash: str) -> None:
        with self._connect() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO sightings (source_uri, size_bytes, mtime_ns, batch_hash, noted_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (printable_name(source_uri), size_bytes, mtime_ns, batch_hash, _now()),
            )

    def forget_sightings(self, source_uri: str) -> None:
        """Drop what was noted for a file (its content changed without its stat showing it): read it again."""
        with self._connect() as conn:
            conn.execute("DELETE FROM sightings WHERE source_uri=?", (printable_name(source_uri),))

    def known_hashes(self) -> set[str]:
        with self._connect() as conn:
            return {row[0] for row in conn.execute("SELECT batch_hash FROM batches")}


def _record(row: sqlite3.Row) -> BatchRecord:
    return BatchRecord(
        batch_hash=row["batch_hash"],
        name=row["name"],
        source_uri=row["source_uri"],
        size_bytes=row["size_bytes"],
        state=row["state"],
        reason=row["reason"],
        details=json.loads(row["details"]) if row["details"] else {},
        n_images=row["n_images"],
        stored_path=row["stored_path"],
        first_seen=row["first_seen"],
        decided_at=row["decided_at"],
        run_id=row["run_id"],
    )
