"""The one SQL database of mlcd's small shared state: the batch ledger, the registry lease, the state store.

Every process (triggerer, Celery/Kubernetes workers, the api-server plugin, the CLI) reaches the same database
through one SQLAlchemy URL, ``MLCD_LEDGER_URL``; the embedded default is the SQLite file
``$MLCD_HOME/ledger.sqlite``, so ``make demo`` needs no server. A cluster points it at Postgres (e.g. the Airflow
metadata database), because SQLite on a network volume is unsafe.

:func:`engine` is the only engine factory: one engine per URL per process, SQLite in WAL mode with a long busy
timeout (writers queue on the file lock instead of failing "database is locked"; readers never block writers),
other databases with ``pool_pre_ping`` (a restarted Postgres or a dropped idle connection is replaced, not
raised). :func:`ensure_schema` creates a module's tables once per process, and is safe when several processes
start at the same moment and race to create them.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine, MetaData, Table


def ledger_url(url: str | None = None) -> str:
    """The SQL URL of the ledger database: ``url``, else ``MLCD_LEDGER_URL``, else the ledger's SQLite file.

    A bare filesystem path is accepted too (``/x/ledger.sqlite`` → ``sqlite:////x/ledger.sqlite``).
    """
    if url:
        return as_url(url)
    from mlcd.settings import get_settings

    settings = get_settings()
    return as_url(settings.ledger_url or settings.ledger_path)


def as_url(location: str | Path) -> str:
    """A SQLAlchemy URL for ``location``: URLs pass through, a filesystem path becomes a SQLite URL."""
    value = str(location)
    if "://" not in value:
        path = Path(value).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    return value


_ENGINES: dict[str, Engine] = {}
_LOCK = threading.Lock()
_SCHEMAS: set[tuple[str, int]] = set()


def _sqlite_engine(url: str) -> Engine:
    from sqlalchemy import create_engine, event
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    # timeout: SQLite's busy timeout, so concurrent writers wait their turn instead of failing at once.
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, the writer never blocks readers
        # One fsync per checkpoint instead of per commit: durable across a process crash, and what a power cut
        # could lose (the last commits) is re-derived: a batch is re-seen, a lease expires, a cooldown restarts.
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    return engine


def engine(url: str | None = None) -> Engine:
    """The process's engine for ``url`` (default :func:`ledger_url`), created on first use."""
    from sqlalchemy import create_engine

    url = ledger_url(url)
    with _LOCK:
        found = _ENGINES.get(url)
        if found is None:
            found = _sqlite_engine(url) if url.startswith("sqlite") else create_engine(url, pool_pre_ping=True)
            _ENGINES[url] = found
        return found


def ensure_schema(eng: Engine, metadata: MetaData) -> None:
    """Create ``metadata``'s missing tables, once per process and URL.

    Several processes starting at once may all try: on Postgres the losers of that race get "duplicate table"
    (or a unique violation on ``pg_type``), on SQLite "table already exists". Such an error is fine when every
    table now exists; anything else is raised.
    """
    from sqlalchemy import inspect
    from sqlalchemy.exc import DBAPIError

    key = (str(eng.url), id(metadata))
    if key in _SCHEMAS:
        return
    for attempt in range(3):
        try:
            metadata.create_all(eng, checkfirst=True)
            break
        except DBAPIError:
            names = set(inspect(eng).get_table_names())
            if all(t.name in names for t in metadata.sorted_tables):
                break
            if attempt == 2:
                raise
    with _LOCK:
        _SCHEMAS.add(key)


def _upsert_insert(conn: Connection, table: Table) -> Any:
    """The dialect's ``INSERT`` with ``ON CONFLICT`` support (SQLite, Postgres), else None."""
    if conn.dialect.name == "sqlite":
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(table)
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)
    return None


def insert_if_absent(conn: Connection, table: Table, values: dict[str, Any]) -> bool:
    """``INSERT`` one row unless its primary key exists; True when this call inserted it.

    ``ON CONFLICT DO NOTHING`` on SQLite and Postgres: the database decides, so of many concurrent callers
    exactly one gets True, and no loser aborts its transaction on a constraint error.
    """
    stmt = _upsert_insert(conn, table)
    if stmt is not None:
        return conn.execute(stmt.values(**values).on_conflict_do_nothing()).rowcount == 1
    from sqlalchemy import insert as plain_insert
    from sqlalchemy.exc import IntegrityError

    try:
        with conn.begin_nested():
            conn.execute(plain_insert(table).values(**values))
    except IntegrityError:
        return False
    return True


def upsert(conn: Connection, table: Table, values: dict[str, Any]) -> None:
    """Insert the row, or overwrite the existing row with the same primary key (one statement)."""
    keys = [c.name for c in table.primary_key.columns]
    base = _upsert_insert(conn, table)
    if base is not None:
        stmt = base.values(**values)
        rest = {k: stmt.excluded[k] for k in values if k not in keys}
        conn.execute(stmt.on_conflict_do_update(index_elements=keys, set_=rest))
        return
    from sqlalchemy import update

    where = [table.c[k] == values[k] for k in keys]
    if conn.execute(update(table).where(*where).values(**values)).rowcount == 0:
        insert_if_absent(conn, table, values)


def _dispose_after_fork() -> None:
    # A forked child must not reuse its parent's pooled connections (both would talk on one socket/file handle).
    for eng in list(_ENGINES.values()):
        eng.dispose(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_dispose_after_fork)


__all__ = ["as_url", "engine", "ensure_schema", "insert_if_absent", "ledger_url", "upsert"]
