"""The micro-batcher on real arrays and a real (numpy) model function: coalescing, order, errors, close."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from mlcd.serving.batching import BatcherClosed, MicroBatcher

pytestmark = pytest.mark.unit


class RowSums:
    """A deterministic model: each input row maps to its sum; records the batch sizes it was called with."""

    def __init__(self, delay_s: float = 0.0):
        self.calls: list[int] = []
        self.delay_s = delay_s
        self.lock = threading.Lock()
        self.concurrent = 0
        self.max_concurrent = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self.lock:
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            if self.delay_s:
                time.sleep(self.delay_s)
            self.calls.append(len(x))
            return x.reshape(len(x), -1).sum(axis=1, keepdims=True)
        finally:
            with self.lock:
                self.concurrent -= 1


def test_concurrent_requests_are_coalesced_and_each_gets_its_own_rows() -> None:
    model = RowSums(delay_s=0.01)

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(model, max_batch_rows=64, max_wait_s=0.002)
        inputs = [np.full((1, 2, 2), i, dtype=np.float32) for i in range(40)]
        out = await asyncio.gather(*(batcher.submit(x) for x in inputs))
        await batcher.aclose()
        return out

    out = asyncio.run(main())
    assert [float(o[0, 0]) for o in out] == [4.0 * i for i in range(40)]
    assert sum(model.calls) == 40
    assert len(model.calls) < 40 / 4, f"expected coalescing, got calls of {model.calls}"
    assert model.max_concurrent == 1  # one model call at a time per batcher


def test_multi_row_items_stay_whole_and_respect_max_rows() -> None:
    model = RowSums()

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(model, max_batch_rows=8, max_wait_s=0.0)
        sizes = [3, 5, 2, 7, 1, 12]
        inputs = [np.arange(n * 4, dtype=np.float32).reshape(n, 2, 2) for n in sizes]
        out = await asyncio.gather(*(batcher.submit(x) for x in inputs))
        await batcher.aclose()
        return [o for o in out]

    out = asyncio.run(main())
    assert [len(o) for o in out] == [3, 5, 2, 7, 1, 12]
    for o, n in zip(out, [3, 5, 2, 7, 1, 12], strict=True):
        expected = np.arange(n * 4, dtype=np.float32).reshape(n, 4).sum(axis=1, keepdims=True)
        np.testing.assert_array_equal(o, expected)
    # Only an item bigger than the limit runs alone above it.
    assert all(c <= 8 or c == 12 for c in model.calls)


def test_idle_traffic_is_not_delayed_by_the_wait_budget() -> None:
    model = RowSums()

    async def main() -> float:
        batcher = MicroBatcher(model, max_batch_rows=64, max_wait_s=0.2)
        worst = 0.0
        for _ in range(5):
            await asyncio.sleep(0.25)  # sparse arrivals: waiting would never fill a batch
            t0 = time.perf_counter()
            await batcher.submit(np.ones((1, 2, 2), dtype=np.float32))
            worst = max(worst, time.perf_counter() - t0)
        await batcher.aclose()
        return worst

    assert asyncio.run(main()) < 0.1


def test_model_error_reaches_every_request_of_the_batch_and_the_batcher_survives() -> None:
    def broken_then_fine(x: np.ndarray) -> np.ndarray:
        if (x < 0).any():
            raise ValueError("negative pixels")
        return x.reshape(len(x), -1)[:, :1]

    async def main() -> tuple[list[object], np.ndarray]:
        batcher = MicroBatcher(broken_then_fine, max_batch_rows=64, max_wait_s=0.0)
        bad = [batcher.submit(np.full((1, 2, 2), -1.0, dtype=np.float32)) for _ in range(3)]
        results = await asyncio.gather(*bad, return_exceptions=True)
        ok = await batcher.submit(np.full((1, 2, 2), 7.0, dtype=np.float32))
        await batcher.aclose()
        return results, ok

    results, ok = asyncio.run(main())
    assert all(isinstance(r, ValueError) for r in results)
    assert float(ok[0, 0]) == 7.0


def test_wrong_row_count_from_the_model_is_an_error() -> None:
    async def main() -> None:
        batcher = MicroBatcher(lambda x: x[:1], max_batch_rows=64, max_wait_s=0.0)
        with pytest.raises(ValueError, match="rows"):
            await batcher.submit(np.ones((3, 2, 2), dtype=np.float32))
        await batcher.aclose()

    asyncio.run(main())


def test_close_answers_queued_requests_then_refuses_new_ones() -> None:
    model = RowSums(delay_s=0.02)

    async def main() -> tuple[int, bool]:
        batcher = MicroBatcher(model, max_batch_rows=2, max_wait_s=0.0)
        pending = [asyncio.ensure_future(batcher.submit(np.ones((1, 2, 2), dtype=np.float32))) for _ in range(6)]
        await asyncio.sleep(0)  # let them queue
        await batcher.aclose()
        done = sum(1 for p in pending if p.done() and p.exception() is None)
        try:
            await batcher.submit(np.ones((1, 2, 2), dtype=np.float32))
        except BatcherClosed:
            return done, True
        return done, False

    done, refused = asyncio.run(main())
    assert done == 6
    assert refused
