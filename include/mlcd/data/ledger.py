"""The batch ledger: one row per landed batch, keyed by content hash, with its state and the reason for it.

It lives in the SQL database at ``MLCD_LEDGER_URL`` (:mod:`mlcd.sql`; default the SQLite file
``$MLCD_HOME/ledger.sqlite``, Postgres on a cluster), so the landing trigger, every worker, the api-server plugin
and the CLI share it without sharing a disk.

Names and URIs are stored as printable text (:func:`mlcd.files.printable_name`): a landed file's name may hold
bytes that are not UTF-8, which the database would refuse. The ``sightings`` table remembers which content hash a
file had at a given size and mtime, so the landing watcher and ``collect`` list by stat and read a file only once.

States: ``landed`` (seen, not yet judged) → ``accepted`` or ``quarantined``. Each transition is one statement the
database serialises, so many writers never race: :meth:`Ledger.see` is ``INSERT ... ON CONFLICT DO NOTHING``
(exactly one caller records a new batch), :meth:`Ledger.decide` is ``UPDATE ... WHERE state='landed'`` (exactly
one verdict is recorded; a re-run that judges the same bytes again finds the row and converges on it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Integer, MetaData, String, Table, Text, delete, select, update
from sqlalchemy.engine import Engine, RowMapping

from mlcd import sql
from mlcd.files import printable_name

LANDED = "landed"
ACCEPTED = "accepted"
QUARANTINED = "quarantined"
STATES = (LANDED, ACCEPTED, QUARANTINED)

# Table and column names are those of the SQLite ledger before SQLAlchemy: an existing ledger file keeps working.
_META = MetaData()
_BATCHES = Table(
    "batches",
    _META,
    Column("batch_hash", String(128), primary_key=True),
    Column("name", Text, nullable=False),
    Column("source_uri", Text, nullable=False),
    Column("size_bytes", Integer, nullable=False),
    Column("state", String(32), nullable=False),
    Column("reason", Text),
    Column("details", Text),
    Column("n_images", Integer),
    Column("stored_path", Text),
    Column("first_seen", String(64), nullable=False),
    Column("decided_at", String(64)),
    Column("run_id", String(255)),
)
_SIGHTINGS = Table(
    "sightings",
    _META,
    Column("source_uri", Text, primary_key=True),
    Column("size_bytes", Integer, primary_key=True),
    Column("mtime_ns", Integer, primary_key=True),
    Column("batch_hash", String(128), nullable=False),
    Column("noted_at", String(64), nullable=False),
)


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
    """The batch ledger in the database at ``location``.

    Args:
        location: a SQLAlchemy URL or a SQLite file path; ``None`` (or the default ``settings.ledger_path``, which
            callers pass to mean "the ledger", or ``""``) is the configured ledger, :func:`mlcd.sql.ledger_url`.
    """

    def __init__(self, location: str | Path | None = None) -> None:
        self.url = _resolve(location)
        self._engine: Engine = sql.engine(self.url)
        sql.ensure_schema(self._engine, _META)

    @property
    def path(self) -> Path | None:
        """The SQLite file, when the ledger is one (None for a server database)."""
        from sqlalchemy.engine import make_url

        url = make_url(self.url)
        return Path(url.database) if url.get_backend_name() == "sqlite" and url.database else None

    def see(self, batch_hash: str, name: str, source_uri: str, size_bytes: int) -> bool:
        """Record a landed batch; ``False`` when its content was seen before (under any name)."""
        values = {
            "batch_hash": batch_hash,
            "name": printable_name(name),
            "source_uri": printable_name(source_uri),
            "size_bytes": size_bytes,
            "state": LANDED,
            "first_seen": _now(),
        }
        with self._engine.begin() as conn:
            return sql.insert_if_absent(conn, _BATCHES, values)

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
        return self.decide_once(
            batch_hash, state, reason=reason, details=details, n_images=n_images, stored_path=stored_path,
            run_id=run_id,
        )[0]

    def decide_once(
        self,
        batch_hash: str,
        state: str,
        *,
        reason: str | None,
        details: dict[str, Any] | None = None,
        n_images: int | None = None,
        stored_path: str | None = None,
        run_id: str | None = None,
    ) -> tuple[BatchRecord, bool]:
        """:meth:`decide`, also saying whether this call made the decision (True) or found it made (False)."""
        if state not in (ACCEPTED, QUARANTINED):
            raise ValueError(f"cannot decide a batch as {state!r}")
        t = _BATCHES
        with self._engine.begin() as conn:
            # One conditional UPDATE: of concurrent deciders the database lets exactly one move it from `landed`.
            won = conn.execute(
                update(t)
                .where((t.c.batch_hash == batch_hash) & (t.c.state == LANDED))
                .values(state=state, reason=reason, details=json.dumps(details or {}), n_images=n_images,
                        stored_path=stored_path, decided_at=_now(), run_id=run_id)
            ).rowcount == 1
            row = conn.execute(select(t).where(t.c.batch_hash == batch_hash)).mappings().first()
        if row is None:
            raise KeyError(f"batch {batch_hash} was never seen")
        return _record(row), won

    def get(self, batch_hash: str) -> BatchRecord | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(_BATCHES).where(_BATCHES.c.batch_hash == batch_hash)).mappings().first()
        return _record(row) if row else None

    def list(self, state: str | None = None) -> list[BatchRecord]:
        query = select(_BATCHES)
        if state is not None:
            query = query.where(_BATCHES.c.state == state)
        with self._engine.connect() as conn:
            rows = conn.execute(query.order_by(_BATCHES.c.first_seen, _BATCHES.c.batch_hash)).mappings().all()
        return [_record(row) for row in rows]

    def hash_seen_as(self, source_uri: str, size_bytes: int, mtime_ns: int) -> str | None:
        """The content hash noted for this file at this size and mtime, if it was read before."""
        t = _SIGHTINGS
        with self._engine.connect() as conn:
            value = conn.execute(
                select(t.c.batch_hash).where(
                    (t.c.source_uri == printable_name(source_uri)) & (t.c.size_bytes == size_bytes)
                    & (t.c.mtime_ns == mtime_ns)
                )
            ).scalar()
        return str(value) if value is not None else None

    def note_sighting(self, source_uri: str, size_bytes: int, mtime_ns: int, batch_hash: str) -> None:
        values = {"source_uri": printable_name(source_uri), "size_bytes": size_bytes, "mtime_ns": mtime_ns,
                  "batch_hash": batch_hash, "noted_at": _now()}
        with self._engine.begin() as conn:
            sql.upsert(conn, _SIGHTINGS, values)

    def forget_sightings(self, source_uri: str) -> None:
        """Drop what was noted for a file (its content changed without its stat showing it): read it again."""
        with self._engine.begin() as conn:
            conn.execute(delete(_SIGHTINGS).where(_SIGHTINGS.c.source_uri == printable_name(source_uri)))

    def known_hashes(self) -> set[str]:
        with self._engine.connect() as conn:
            return {str(h) for h in conn.execute(select(_BATCHES.c.batch_hash)).scalars()}


def _resolve(location: str | Path | None) -> str:
    """The ledger's URL. The default file path means the configured ledger, so callers that pass
    ``settings.ledger_path`` follow ``MLCD_LEDGER_URL`` without changing."""
    from mlcd.settings import get_settings

    if location is None or str(location) == "":
        return sql.ledger_url()
    if "://" not in str(location):
        settings = get_settings()
        if settings.ledger_url and Path(location).expanduser().resolve() == settings.ledger_path:
            return sql.ledger_url()
    return sql.as_url(location)


def _record(row: RowMapping) -> BatchRecord:
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
