"""The platform's operational signals on every gateway's ``/metrics`` (see :mod:`mlcd.rollout.opsignals`).

A collector on the gateway's registry. It never reads the database while Prometheus waits: a daemon thread
refreshes a cached copy every ``refresh_s`` seconds, and ``collect`` only formats it. Exported:

* ``mlcd_rollbacks_total`` / ``mlcd_fail_closed_total``: events so far (the whole platform's, the same on every pod);
* ``mlcd_guard_last_poll_timestamp_seconds``: when a guard last judged a version (absent before the first), and
  ``mlcd_guard_watching``: 1 while that guard run goes on watching;
* ``mlcd_ops_signals_up``: 1 when the last refresh read the ledger, 0 when it could not (the alerts on the
  counters are then blind, and an alert says so).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

log = logging.getLogger(__name__)


class OpsCollector(Collector):
    """Args: url: the ledger database (``MLCD_LEDGER_URL``); refresh_s: how often it is read."""

    def __init__(self, url: str | None = None, refresh_s: float = 10.0) -> None:
        self.url = url
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._signals: dict[Any, Any] = {}
        self._up = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def register(self, registry: CollectorRegistry) -> OpsCollector:
        registry.register(self)
        return self

    def refresh(self) -> None:
        from mlcd.rollout.opsignals import read_all

        try:
            signals, up = read_all(self.url), 1
        except Exception as exc:  # noqa: BLE001 - exported as mlcd_ops_signals_up 0, never a failed scrape
            log.warning("ops signals unreadable: %s: %s", type(exc).__name__, exc)
            signals, up = None, 0
        with self._lock:
            if signals is not None:
                self._signals = signals
            self._up = up

    def _run(self) -> None:
        while True:
            self.refresh()
            if self._stop.wait(self.refresh_s):
                return

    def start(self) -> OpsCollector:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mlcd-ops-signals", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def collect(self) -> Iterator[Any]:
        from mlcd.rollout.opsignals import WATCHING, OpsEvent

        with self._lock:
            signals, up = dict(self._signals), self._up
        rollbacks = CounterMetricFamily("mlcd_rollbacks", "Rollbacks the platform made (shared ledger)")
        rollbacks.add_metric([], float(signals[OpsEvent.ROLLBACK].count if OpsEvent.ROLLBACK in signals else 0))
        yield rollbacks
        closed = CounterMetricFamily("mlcd_fail_closed", "Canaries taken to 0 % because metrics were unusable")
        closed.add_metric([], float(signals[OpsEvent.FAIL_CLOSED].count if OpsEvent.FAIL_CLOSED in signals else 0))
        yield closed
        if OpsEvent.GUARD_POLL in signals:
            last = signals[OpsEvent.GUARD_POLL]
            yield GaugeMetricFamily("mlcd_guard_last_poll_timestamp_seconds", "When a guard last judged a version",
                                    value=last.last_at)
            # 1 while a guard run goes on watching (its last poll said so): a heartbeat that then stops is a guard
            # that died mid-watch (triggerer down), not one that finished.
            yield GaugeMetricFamily("mlcd_guard_watching", "1 while a guard run is watching a version",
                                    value=1.0 if last.reason == WATCHING else 0.0)
        yield GaugeMetricFamily("mlcd_ops_signals_up", "1 when the ledger's ops signals were readable", value=up)
