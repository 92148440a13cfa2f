"""Small shared state (a few JSON rows) in the ledger's SQL database, with compare-and-set.

What used to be JSON files under ``MLCD_HOME`` (the drift signal's cooldown, the guard trigger's checkpoint) is
one row of ``mlcd_state`` each, in the database at ``MLCD_LEDGER_URL`` (:mod:`mlcd.sql`), so a triggerer, Celery
workers on other machines and the CLI see the same value without sharing a disk.

Every row carries a ``version`` that grows by one with every write. :meth:`StateStore.compare_and_set` is one
conditional statement (``INSERT ... ON CONFLICT DO NOTHING`` for version 0, ``UPDATE ... WHERE version=v``
otherwise), so of several concurrent writers that read the same version exactly one succeeds, whatever the
database. :meth:`StateStore.claim` (a cooldown) and :meth:`StateStore.replace_if` (keep the more advanced state)
are built on it; no caller ever reads, decides and writes without that check.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Float, Integer, MetaData, String, Table, Text, delete, select, update
from sqlalchemy.engine import Engine

from mlcd import sql

_META = MetaData()
_STATE = Table(
    "mlcd_state",
    _META,
    Column("key", String(255), primary_key=True),
    Column("value_json", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("updated_at", Float, nullable=False),
)

DRIFT_SIGNAL_KEY = "drift/last_signal"


@dataclass(frozen=True)
class Entry:
    """One row: its value, its version (0: absent) and when it was written (epoch seconds; 0.0 when absent)."""

    value: dict[str, Any] | None
    version: int
    updated_at: float


class StateStore:
    """The ``mlcd_state`` table of the database at ``url`` (default :func:`mlcd.sql.ledger_url`)."""

    def __init__(self, url: str | None = None) -> None:
        self.url = sql.ledger_url(url)
        self._engine: Engine = sql.engine(self.url)
        sql.ensure_schema(self._engine, _META)

    def read(self, key: str) -> Entry:
        t = _STATE
        with self._engine.connect() as conn:
            row = conn.execute(select(t.c.value_json, t.c.version, t.c.updated_at).where(t.c.key == key)).first()
        if row is None:
            return Entry(None, 0, 0.0)
        return Entry(json.loads(row.value_json), int(row.version), float(row.updated_at))

    def get(self, key: str) -> dict[str, Any] | None:
        return self.read(key).value

    def compare_and_set(self, key: str, expected_version: int, value: Mapping[str, Any]) -> bool:
        """Write ``value`` if the row is still at ``expected_version`` (0: absent); True when this call wrote it."""
        t = _STATE
        text = json.dumps(dict(value), sort_keys=True, default=str)
        now = time.time()
        with self._engine.begin() as conn:
            if expected_version == 0:
                return sql.insert_if_absent(conn, t, {"key": key, "value_json": text, "version": 1, "updated_at": now})
            n = conn.execute(
                update(t)
                .where((t.c.key == key) & (t.c.version == expected_version))
                .values(value_json=text, version=expected_version + 1, updated_at=now)
            ).rowcount
        return n == 1

    def put(self, key: str, value: Mapping[str, Any]) -> None:
        """Write ``value`` whatever is there (last writer wins)."""
        while not self.compare_and_set(key, self.read(key).version, value):
            pass  # a concurrent writer moved the version between our read and write: read it again

    def replace_if(
        self,
        key: str,
        value: Mapping[str, Any],
        better: Callable[[dict[str, Any], dict[str, Any]], bool],
        *,
        attempts: int = 20,
    ) -> bool:
        """Write ``value`` only if the row is absent or ``better(value, current)``; True when written.

        A concurrent write between the read and the write is seen (the version moved), re-read and judged again.
        """
        for _ in range(attempts):
            entry = self.read(key)
            if entry.value is not None and not better(dict(value), entry.value):
                return False
            if self.compare_and_set(key, entry.version, value):
                return True
        return False

    def claim(self, key: str, cooldown_s: float, now: float | None = None, **extra: Any) -> bool:
        """True for exactly one caller per ``cooldown_s``: the row records when the last claim was made.

        Of N concurrent callers after the cooldown, all read the same version and only one compare-and-set
        succeeds; the others see that someone just claimed, which is exactly "within the cooldown".
        """
        now = time.time() if now is None else float(now)
        entry = self.read(key)
        last = float((entry.value or {}).get("at", 0.0))
        if entry.value is not None and now - last < cooldown_s:
            return False
        return self.compare_and_set(key, entry.version, {"at": now, **extra})

    def delete(self, key: str) -> None:
        with self._engine.begin() as conn:
            conn.execute(delete(_STATE).where(_STATE.c.key == key))


__all__ = ["DRIFT_SIGNAL_KEY", "Entry", "StateStore"]
