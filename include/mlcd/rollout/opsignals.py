"""Operational signals for the people on call: rollbacks, fail-closed moves and the guard's heartbeat.

A rollback or a fail-closed move happens in an Airflow task (or the CLI), which Prometheus does not scrape, and a
guard that stopped running leaves no series at all. So each such event is counted in the ledger database's small
shared state (:class:`mlcd.statestore.StateStore`, one row per signal, compare-and-set), and every gateway pod
exports the counts on ``/metrics`` (:mod:`mlcd.serving.opsmetrics`), where the alert rules in
``deploy/observability/`` read them (``max`` over the pods: each exports the same value).

Listeners (:func:`add_listener`) hear each event as it is recorded: the Airflow layer registers one that sends
it through the alert Connection (``mlcd_alerts``), so this module stays Airflow-free. Recording never raises: an
unreadable ledger is logged, and the traffic move that caused the event stands.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

log = logging.getLogger(__name__)


class OpsEvent(str, Enum):
    ROLLBACK = "rollback"
    FAIL_CLOSED = "fail_closed"
    GUARD_POLL = "guard_poll"


WATCHING = "watching"  # a guard poll's reason while it goes on watching (any other: the run's decision)
KEYS = {event: f"ops/{event.value}" for event in OpsEvent}
_ATTEMPTS = 8  # compare-and-set retries under contention (each loser re-reads)


@dataclass(frozen=True)
class Signal:
    """One event kind: how many so far, and the last one (epoch seconds, version, reason)."""

    count: int
    last_at: float
    version: str | None
    reason: str


Listener = Callable[[OpsEvent, str | None, str], None]
_LISTENERS: list[Listener] = []


def add_listener(listener: Listener) -> None:
    """Call ``listener(event, version, reason)`` after each recorded rollback or fail-closed move (not polls)."""
    if listener not in _LISTENERS:
        _LISTENERS.append(listener)


def record(event: OpsEvent, version: str | None = None, reason: str = "", url: str | None = None) -> Signal | None:
    """Count one ``event`` in the shared state; the new value, or None when the ledger could not be written."""
    signal = None
    try:
        from mlcd.statestore import StateStore

        store = StateStore(url)
        for _ in range(_ATTEMPTS):
            entry = store.read(KEYS[event])
            count = int((entry.value or {}).get("count", 0)) + 1
            now, why = time.time(), reason[:500]
            value = {"count": count, "last_at": now, "version": version, "reason": why}
            if store.compare_and_set(KEYS[event], entry.version, value):
                signal = Signal(count, now, version, why)
                break
    except Exception as exc:  # noqa: BLE001 - a signal must never undo or fail the move it reports
        log.warning("ops signal %s not recorded: %s: %s", event.value, type(exc).__name__, exc)
    if event is not OpsEvent.GUARD_POLL:
        for listener in list(_LISTENERS):
            try:
                listener(event, version, reason)
            except Exception as exc:  # noqa: BLE001 - a failing alert channel is logged, never raised
                log.warning("ops listener for %s failed: %s: %s", event.value, type(exc).__name__, exc)
    return signal


def read_all(url: str | None = None) -> dict[OpsEvent, Signal]:
    """Every signal recorded so far (absent ones left out); raises when the ledger cannot be read."""
    from mlcd.statestore import StateStore

    store = StateStore(url)
    out: dict[OpsEvent, Signal] = {}
    for event, key in KEYS.items():
        value: dict[str, Any] | None = store.get(key)
        if value:
            out[event] = Signal(int(value.get("count", 0)), float(value.get("last_at", 0.0)),
                                value.get("version"), str(value.get("reason", "")))
    return out
