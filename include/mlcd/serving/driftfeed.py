"""Input drift scored once per event-loop turn for all the requests of that turn, not once per request.

Scoring live images against the drift reference (:meth:`mlcd.guard.drift.DriftMonitor.update`) is a few
vectorised matrix products whose fixed cost dwarfs the per-image one: on the reference CNN's 28×28 images one
call costs about as much CPU, on the event loop, as all the rest of a single-image request, and 32 images cost
little more than one. So requests hand their checked images to a :class:`DriftFeed`, which scores everything
handed in during one turn of the event loop in a single call on the next turn (while the requests wait for their
model call). Every image is still scored exactly once, in arrival order, whatever the model then answers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class DriftFeed:
    """Coalesces ``add(x)`` calls of one event-loop turn into one ``monitor.update`` call."""

    def __init__(self, monitor: Any) -> None:
        self.monitor = monitor
        self._pending: list[np.ndarray] = []
        self._scheduled = False

    def add(self, x: np.ndarray) -> None:
        """Queue ``x`` (checked ``N×28×28`` images) for scoring with the rest of this event-loop turn's."""
        self._pending.append(x)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            self.monitor.update(pending[0] if len(pending) == 1 else np.concatenate(pending))
        except ValueError as exc:
            log.warning("drift scoring failed for %d requests: %s", len(pending), exc)
