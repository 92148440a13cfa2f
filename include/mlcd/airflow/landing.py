"""The data-arrival sensor: a deferrable sensor whose trigger watches the landing zone for unseen batches.

A batch is "unseen" when its content hash is not in the ledger. The watcher lists the landing zone by stat only
(name, size, mtime): a file is considered once it has settled (unchanged for ``MLCD_SETTLE_S``), and its bytes are
streamed once per size and mtime to hash them (remembered in memory across polls and in the ledger's sightings
across runs), never re-read on every poll. A file that cannot be read is still reported (under a key made of its
stat) so that the retrain run quarantines it with its reason. The sensor records what it found as ``landed``
before it succeeds, so the next watch run waits for the *next* batch instead of firing again; the retrain run it
starts (through the landing Asset) collects every landed, undecided batch.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator, Context
from airflow.sdk.exceptions import AirflowException
from airflow.triggers.base import BaseTrigger, TriggerEvent


class EventStatus(str, enum.Enum):
    FOUND = "found"
    ERROR = "error"


def find_unseen_batches(
    landing_uri: str,
    ledger_path: str,
    known: dict[str, str] | None = None,
    *,
    settle_s: float | None = None,
    max_bytes: int | None = None,
) -> list[dict[str, Any]]:
    """Settled batches in the landing zone whose content the ledger has never seen.

    Args:
        known: cache of ``uri|size|mtime`` → hash from earlier polls, so unchanged files are not re-read.
        settle_s / max_bytes: default to ``MLCD_SETTLE_S`` / ``MLCD_MAX_BATCH_BYTES``.
    """
    from mlcd.data.intake import identify
    from mlcd.data.landing import LandingZone
    from mlcd.data.ledger import Ledger
    from mlcd.settings import get_settings

    settings = get_settings()
    settle_s = settings.settle_s if settle_s is None else settle_s
    max_bytes = settings.max_batch_bytes if max_bytes is None else max_bytes
    zone = LandingZone(landing_uri)
    ledger = Ledger(ledger_path)
    seen = ledger.known_hashes()
    known = known if known is not None else {}
    found = []
    for landed in zone.list():
        if not landed.settled(settle_s):
            continue
        key = f"{landed.display_uri}|{landed.size_bytes}|{landed.mtime_ns}"
        batch_hash = known.get(key)
        if batch_hash is None:
            batch_hash = identify(zone, ledger, landed, max_bytes).batch_hash  # the name collect will give it
            if batch_hash is None:
                continue  # gone or changed while read: looked at again next poll
        known[key] = batch_hash
        if batch_hash not in seen:
            found.append({"batch_hash": batch_hash, "name": landed.display_name, "uri": landed.display_uri,
                          "size_bytes": landed.size_bytes})
    return found


class NewBatchTrigger(BaseTrigger):
    """Polls the landing zone from the triggerer and fires once unseen batches are there."""

    def __init__(self, landing_uri: str, ledger_path: str, poll_interval: float = 5.0) -> None:
        super().__init__()
        self.landing_uri = landing_uri
        self.ledger_path = ledger_path
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"landing_uri": self.landing_uri, "ledger_path": self.ledger_path, "poll_interval": self.poll_interval},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        known: dict[str, str] = {}
        try:
            while True:
                # Listing and hashing are blocking I/O: keep them off the triggerer's event loop.
                found = await asyncio.to_thread(find_unseen_batches, self.landing_uri, self.ledger_path, known)
                if found:
                    yield TriggerEvent({"status": EventStatus.FOUND.value, "batches": found})
                    return
                await asyncio.sleep(self.poll_interval)
        except Exception as err:  # an unreadable landing zone must surface as a task error, not a dead trigger
            yield TriggerEvent({"status": EventStatus.ERROR.value, "message": f"{type(err).__name__}: {err}"})


class NewBatchSensor(BaseSensorOperator):
    """Waits, without holding a worker slot, until an unseen batch lands; records it and emits its outlets."""

    template_fields = ("landing_uri", "ledger_path")

    def __init__(
        self,
        *,
        landing_uri: str | None = None,
        ledger_path: str | None = None,
        poll_interval: float = 5.0,
        max_wait: timedelta = timedelta(days=1),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.landing_uri = landing_uri
        self.ledger_path = ledger_path
        self.poll_interval = poll_interval
        self.max_wait = max_wait

    def _paths(self) -> tuple[str, str]:
        from mlcd.settings import get_settings

        settings = get_settings()
        # "" is the ledger at MLCD_LEDGER_URL as each process (this worker, the triggerer) is configured: the
        # trigger's kwargs carry neither a local path nor the database's credentials.
        return self.landing_uri or settings.landing_uri, self.ledger_path or ""

    def execute(self, context: Context) -> list[dict[str, Any]] | None:
        landing_uri, ledger_path = self._paths()
        found = find_unseen_batches(landing_uri, ledger_path)
        if found:
            return self._record(found, ledger_path)
        self.defer(
            trigger=NewBatchTrigger(landing_uri, ledger_path, self.poll_interval),
            method_name=self.execute_complete.__name__,
            timeout=self.max_wait,
        )
        return None

    def execute_complete(self, context: Context, event: dict[str, Any]) -> list[dict[str, Any]]:
        if event.get("status") != EventStatus.FOUND.value:
            raise AirflowException(f"landing zone watch failed: {event.get('message', event)}")
        return self._record(event["batches"], self._paths()[1])

    def _record(self, found: list[dict[str, Any]], ledger_path: str) -> list[dict[str, Any]]:
        from mlcd.data.ledger import Ledger

        ledger = Ledger(ledger_path)
        for batch in found:
            ledger.see(batch["batch_hash"], batch["name"], batch["uri"], batch["size_bytes"])
            self.log.info("new batch %s (%s): starting mlcd_retrain", batch["name"], batch["batch_hash"][:12])
        return found
