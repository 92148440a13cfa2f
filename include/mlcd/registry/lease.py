"""One writer at a time on the registry: a lease row in the ledger's SQL database around every alias move.

MLflow has no compare-and-set on aliases, so two writers (``mlcd_guard`` and ``mlcd_retrain`` are separate DAGs)
could both read "champion is 3" and both move it. Every alias move therefore runs inside a lease taken in the
same SQL database as the batch ledger (by default the ledger's SQLite file; ``MLCD_LEDGER_URL`` names another
SQLAlchemy URL, e.g. the Airflow metadata Postgres):

* **Acquire** is one conditional ``UPDATE`` (free, expired, or already ours), so exactly one of many concurrent
  writers wins, whatever the database; a loser polls until ``wait_s`` and then fails with who holds it.
* **Expiry**: a holder that dies (OOM-killed task, lost node) blocks others for at most ``ttl_s``; long moves call
  :meth:`Lease.renew`.
* **Fencing token**: each acquisition increments ``token``. A holder checks it (:meth:`Lease.check`) right before
  each alias write, so a holder whose lease expired and was taken over stops instead of overwriting the newer
  holder's move (MLflow cannot check the token itself; the check narrows the window to one HTTP call).
* **Intent**: the holder writes what it is about to do (``intent``) before acting and clears it when done. A
  holder that dies leaves it behind; the next holder gets it back (:attr:`Lease.pending_intent`) and completes
  that move first, so a re-run honours the recorded intent instead of deciding again on half-moved aliases.

The engine is the shared one of :mod:`mlcd.sql`; the schema is created idempotently (:func:`mlcd.sql.ensure_schema`),
so any process may be the first.
"""

from __future__ import annotations

import contextvars
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from mlcd import sql
from mlcd.registry.errors import RegistryError
from mlcd.sql import ledger_url

DEFAULT_TTL_S = 60.0
DEFAULT_WAIT_S = 30.0


class LeaseError(RegistryError):
    """The registry lease could not be taken in time, or was lost (expired and taken over) while moving."""


class LeaseHeldError(LeaseError):
    """Another writer holds the registry lease; the message names it and when its lease expires."""


class LeaseLostError(LeaseError):
    """Our lease expired and another writer took it (its fencing token is newer): stop, re-read, decide again."""


def _engine(url: str) -> Any:
    """The shared engine for ``url`` (:func:`mlcd.sql.engine`) with the lease table created (idempotently)."""
    eng = sql.engine(url)
    sql.ensure_schema(eng, _metadata())
    return eng


_META: Any = None


def _metadata() -> Any:
    global _META
    if _META is None:
        from sqlalchemy import Column, Float, Integer, MetaData, String, Table, Text

        _META = MetaData()
        Table(
            "mlcd_registry_lease",
            _META,
            Column("name", String(255), primary_key=True),
            Column("owner", String(255), nullable=True),
            Column("token", Integer, nullable=False, default=0),
            Column("expires_at", Float, nullable=False, default=0.0),
            Column("acquired_at", Float, nullable=True),
            Column("intent", Text, nullable=True),
        )
    return _META


def _table() -> Any:
    return _metadata().tables["mlcd_registry_lease"]


def default_owner() -> str:
    """``host:pid:thread:random``: unique per holder, readable in an error message."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex[:6]}"


@dataclass
class Lease:
    """A held lease. ``token`` is the fencing token: it grows by one with every acquisition of the name."""

    name: str
    owner: str
    token: int
    expires_at: float
    url: str
    ttl_s: float
    pending_intent: dict[str, Any] | None = None  # left behind by a holder that died mid-move
    depth: int = field(default=1, repr=False)

    def _valid_where(self) -> Any:
        t = _table()
        return (t.c.name == self.name) & (t.c.owner == self.owner) & (t.c.token == self.token)

    def check(self) -> None:
        """Raise :class:`LeaseLostError` unless this lease is still ours and unexpired (call before each write)."""
        from sqlalchemy import select

        t = _table()
        with _engine(self.url).connect() as conn:
            row = conn.execute(select(t.c.owner, t.c.token, t.c.expires_at).where(t.c.name == self.name)).first()
        if row is None or row.owner != self.owner or row.token != self.token:
            raise LeaseLostError(
                f"registry lease {self.name!r} was taken over (token {self.token} -> "
                f"{None if row is None else row.token}, by {None if row is None else row.owner}): "
                "stopping before the next alias write; re-read the registry and decide again"
            )
        if row.expires_at < time.time():
            raise LeaseLostError(f"registry lease {self.name!r} expired during the move: stopping before the next write")

    def renew(self, ttl_s: float | None = None) -> None:
        """Push the expiry out by ``ttl_s`` (default: the acquisition's), if the lease is still ours."""
        from sqlalchemy import update

        ttl = self.ttl_s if ttl_s is None else ttl_s
        expires = time.time() + ttl
        with _engine(self.url).begin() as conn:
            n = conn.execute(update(_table()).where(self._valid_where()).values(expires_at=expires)).rowcount
        if n != 1:
            raise LeaseLostError(f"registry lease {self.name!r} (token {self.token}) is no longer ours")
        self.expires_at = expires

    def record_intent(self, intent: dict[str, Any]) -> None:
        """Write what this holder is about to do, before doing it (see the module docstring)."""
        from sqlalchemy import update

        text = json.dumps(intent, sort_keys=True, separators=(",", ":"), default=str)
        with _engine(self.url).begin() as conn:
            n = conn.execute(update(_table()).where(self._valid_where()).values(intent=text)).rowcount
        if n != 1:
            raise LeaseLostError(f"registry lease {self.name!r} lost before recording intent {intent.get('op')}")

    def clear_intent(self) -> None:
        from sqlalchemy import update

        with _engine(self.url).begin() as conn:
            conn.execute(update(_table()).where(self._valid_where()).values(intent=None))
        self.pending_intent = None


def read_lease(name: str, url: str | None = None) -> dict[str, Any] | None:
    """The lease row as a dict (``owner`` None when free), or None when it was never taken."""
    from sqlalchemy import select

    url = ledger_url(url)
    t = _table()
    with _engine(url).connect() as conn:
        row = conn.execute(select(t).where(t.c.name == name)).first()
    if row is None:
        return None
    out = dict(row._mapping)
    out["intent"] = json.loads(out["intent"]) if out.get("intent") else None
    out["held"] = bool(out["owner"]) and float(out["expires_at"]) >= time.time()
    return out


def try_acquire(name: str, owner: str, ttl_s: float = DEFAULT_TTL_S, url: str | None = None) -> Lease | None:
    """Take the lease if it is free, expired, or already ``owner``'s; None when someone else holds it.

    The decision is one ``UPDATE ... WHERE owner IS NULL OR expires_at < now OR owner = me``, which the database
    serialises, so two concurrent callers cannot both win.
    """
    from sqlalchemy import select, update

    url = ledger_url(url)
    engine = _engine(url)
    t = _table()
    with engine.begin() as conn:  # the row exists already in the common case
        sql.insert_if_absent(conn, t, {"name": name, "owner": None, "token": 0, "expires_at": 0.0})
    now = time.time()
    expires = now + ttl_s
    with engine.begin() as conn:
        n = conn.execute(
            update(t)
            .where((t.c.name == name) & ((t.c.owner.is_(None)) | (t.c.expires_at < now) | (t.c.owner == owner)))
            .values(owner=owner, token=t.c.token + 1, expires_at=expires, acquired_at=now)
        ).rowcount
        if n != 1:
            return None
        row = conn.execute(select(t.c.token, t.c.intent).where(t.c.name == name)).one()
    pending = json.loads(row.intent) if row.intent else None
    return Lease(name, owner, int(row.token), expires, url, ttl_s, pending)


def release(lease: Lease) -> bool:
    """Free the lease if it is still ours (True); the intent is kept only if the move did not clear it."""
    from sqlalchemy import update

    with _engine(lease.url).begin() as conn:
        n = conn.execute(update(_table()).where(lease._valid_where()).values(owner=None, expires_at=0.0)).rowcount
    return n == 1


# The lease this thread/task already holds, per name: nested moves (promote → bootstrap) reuse it.
_HELD: contextvars.ContextVar[dict[str, Lease] | None] = contextvars.ContextVar("mlcd_registry_leases", default=None)


def current_lease(name: str) -> Lease | None:
    held = _HELD.get()
    return None if held is None else held.get(name)


@contextmanager
def hold(
    name: str,
    *,
    url: str | None = None,
    owner: str | None = None,
    ttl_s: float = DEFAULT_TTL_S,
    wait_s: float = DEFAULT_WAIT_S,
    poll_s: float = 0.05,
) -> Iterator[Lease]:
    """Hold lease ``name`` for the block: wait up to ``wait_s`` for it, release it afterwards.

    Re-entrant within one thread/task: an inner ``hold`` of a name already held yields the same lease.

    Raises:
        LeaseHeldError: another writer held it for all of ``wait_s``.
    """
    held = dict(_HELD.get() or {})
    if name in held:
        lease = held[name]
        lease.depth += 1
        try:
            yield lease
        finally:
            lease.depth -= 1
        return
    owner = owner or default_owner()
    deadline = time.monotonic() + wait_s
    delay = poll_s
    lease_or_none = try_acquire(name, owner, ttl_s, url)
    while lease_or_none is None:
        if time.monotonic() >= deadline:
            row = read_lease(name, url) or {}
            left = max(0.0, float(row.get("expires_at") or 0.0) - time.time())
            raise LeaseHeldError(
                f"registry lease {name!r} is held by {row.get('owner')} (expires in {left:.0f}s, "
                f"doing {(row.get('intent') or {}).get('op', 'an alias move')}); waited {wait_s:g}s: retry later"
            )
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 1.0)
        lease_or_none = try_acquire(name, owner, ttl_s, url)
    lease = lease_or_none
    held[name] = lease
    token = _HELD.set(held)
    try:
        yield lease
    finally:
        _HELD.reset(token)
        release(lease)


__all__ = [
    "DEFAULT_TTL_S",
    "DEFAULT_WAIT_S",
    "Lease",
    "LeaseError",
    "LeaseHeldError",
    "LeaseLostError",
    "current_lease",
    "default_owner",
    "hold",
    "ledger_url",
    "read_lease",
    "release",
    "try_acquire",
]
