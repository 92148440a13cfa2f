"""Adaptive micro-batching: concurrent requests to one model are coalesced into one model call.

TF Serving's batching scheduler waits up to ``batch_timeout_micros`` to fill a batch. Waiting costs every request
at low load, so this batcher adapts: it always takes whatever queued up while the previous call ran (that costs
nothing), and only when requests have recently been arriving faster than ``max_wait_s`` does it wait for more,
by giving the event loop turns (requests already read get parsed and join) until a few turns bring nobody, the
batch is full or ``max_wait_s`` has passed. A single-threaded executor runs the model so calls
to one model never overlap (TensorFlow parallelises inside a call) and the event loop stays free.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

BatchFn = Callable[[np.ndarray], np.ndarray]
# Event-loop turns in a row that bring no request before a busy batch stops waiting for company: a request needs
# a turn or two from its socket's data to its submit (headers, body, parse).
IDLE_TURNS = 3


class BatcherClosed(RuntimeError):
    """Raised when a request is submitted to a batcher that has been closed."""


@dataclass
class _Item:
    x: np.ndarray
    future: asyncio.Future[np.ndarray]


@dataclass
class BatcherStats:
    calls: int = 0
    items: int = 0
    rows: int = 0
    max_rows: int = 0

    @property
    def mean_rows(self) -> float:
        return self.rows / self.calls if self.calls else 0.0


class MicroBatcher:
    """Coalesce ``submit(x)`` calls (``x``: ``n×…`` arrays) into calls of ``fn`` on their concatenation.

    Args:
        fn: the model call; maps a ``B×…`` array to a ``B×…`` array (row ``i`` answers input row ``i``).
        max_batch_rows: rows per model call at most; an item never gets split, so a bigger item runs alone.
        max_wait_s: the most a batch waits for company when traffic is busy (TF Serving's batch timeout).
        name: used in the executor's thread name.
    """

    def __init__(self, fn: BatchFn, max_batch_rows: int = 64, max_wait_s: float = 0.002, name: str = "model"):
        self.fn = fn
        self.max_batch_rows = max(1, int(max_batch_rows))
        self.max_wait_s = max(0.0, float(max_wait_s))
        self.stats = BatcherStats()
        self._queue: asyncio.Queue[_Item | None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batch-{name}")
        self._closed = False
        self._last_arrival = 0.0
        self._ewma_gap = float("inf")  # smoothed seconds between arrivals

    def _ensure_started(self) -> asyncio.Queue[_Item | None]:
        # Created lazily so the batcher binds to the loop that serves requests, not the one that built it.
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._run())
        return self._queue

    async def submit(self, x: np.ndarray) -> np.ndarray:
        """Queue ``x`` and wait for its rows of the batched result; the model's exception is re-raised."""
        if self._closed:
            raise BatcherClosed("model is being unloaded")
        queue = self._ensure_started()
        now = time.perf_counter()
        if self._last_arrival:
            gap = now - self._last_arrival
            self._ewma_gap = gap if self._ewma_gap == float("inf") else 0.8 * self._ewma_gap + 0.2 * gap
        self._last_arrival = now
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        queue.put_nowait(_Item(x, future))
        return await future

    def _busy(self) -> bool:
        """Requests have been arriving closer together than the wait budget: waiting will likely fill."""
        return self.max_wait_s > 0 and self._ewma_gap < self.max_wait_s

    async def _run(self) -> None:
        assert self._queue is not None
        queue = self._queue
        loop = asyncio.get_running_loop()
        stop = False
        while not stop:
            first = await queue.get()
            if first is None:
                break
            batch = [first]
            rows = len(first.x)
            deadline = time.perf_counter() + self.max_wait_s
            idle_turns = 0
            while rows < self.max_batch_rows:
                try:
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    # Busy: give the event loop a turn, so requests already read from their sockets get parsed
                    # and join, rather than sleep on a timer. A closed loop of clients that are all queued sends
                    # nothing more until answered: a timer would idle the model for the whole budget, while a
                    # few turns that bring nobody end the wait at once. The budget still bounds the latency.
                    if not self._busy() or idle_turns >= IDLE_TURNS or time.perf_counter() >= deadline:
                        break
                    idle_turns += 1
                    await asyncio.sleep(0)
                    continue
                idle_turns = 0
                if item is None:
                    stop = True
                    break
                if rows + len(item.x) > self.max_batch_rows:
                    # Too big to join: run it in the next call rather than split it.
                    await self._execute(loop, batch)
                    batch, rows = [item], len(item.x)
                    continue
                batch.append(item)
                rows += len(item.x)
            await self._execute(loop, batch)

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        live = [item for item in batch if not item.future.done()]  # a cancelled client needs no answer
        if not live:
            return
        x = live[0].x if len(live) == 1 else np.concatenate([item.x for item in live])
        try:
            out = await loop.run_in_executor(self._executor, self.fn, x)
            if len(out) != len(x):
                raise ValueError(f"model returned {len(out)} rows for {len(x)} inputs")
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the model's own error
            for item in live:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        self.stats.calls += 1
        self.stats.items += len(live)
        self.stats.rows += len(x)
        self.stats.max_rows = max(self.stats.max_rows, len(x))
        start = 0
        for item in live:
            end = start + len(item.x)
            if not item.future.done():
                item.future.set_result(out[start:end])
            start = end

    async def aclose(self) -> None:
        """Stop taking requests, answer everything already queued, then stop the worker."""
        self._closed = True
        if self._queue is not None and self._worker is not None:
            self._queue.put_nowait(None)
            await self._worker
        self._executor.shutdown(wait=False)
