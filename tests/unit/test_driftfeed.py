"""The drift feed scores every request's images once, in order, in one call per event-loop turn."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from mlcd.guard.drift import DriftMonitor, DriftReference, DriftThresholds
from mlcd.serving.driftfeed import DriftFeed

pytestmark = pytest.mark.unit


def _images(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 30, size=(n, 28, 28)).astype(np.float32)
    for i, row in enumerate(rng.integers(10, 18, size=n)):
        x[i, row : row + 3, 6:22] = rng.integers(180, 255)
    return x


class Counting(DriftMonitor):
    """The real monitor, counting its update calls."""

    calls = 0

    def update(self, images: np.ndarray) -> None:
        self.calls += 1
        super().update(images)


def test_one_turn_of_requests_is_one_update_with_the_same_report_as_one_update_each() -> None:
    ref = DriftReference.fit(_images(400, 0), n_components=4)
    requests = [_images(1 + i % 3, seed=10 + i) for i in range(30)]
    one_each = DriftMonitor(ref, DriftThresholds(min_images=1), window=40)
    for x in requests:
        one_each.update(x)
    fed = Counting(ref, DriftThresholds(min_images=1), window=40)

    async def main() -> None:
        feed = DriftFeed(fed)
        for x in requests:  # one event-loop turn: no await between the requests
            feed.add(x)
        assert fed.calls == 0  # nothing scored on the request's own path
        await asyncio.sleep(0)
        assert fed.calls == 1
        feed.add(requests[0])  # a later turn gets its own call
        await asyncio.sleep(0)
        assert fed.calls == 2

    asyncio.run(main())
    one_each.update(requests[0])
    assert fed.n_images == one_each.n_images == 40  # the window, filled in the same order
    assert fed.report() == one_each.report()


def test_a_failed_score_is_logged_and_the_feed_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    ref = DriftReference.fit(_images(400, 0), n_components=4)
    monitor = DriftMonitor(ref, DriftThresholds(min_images=1), window=10)

    async def main() -> None:
        feed = DriftFeed(monitor)
        feed.add(np.zeros((2, 5, 5), dtype=np.float32))  # not the reference's image shape
        await asyncio.sleep(0)
        feed.add(_images(3, 1))
        await asyncio.sleep(0)

    asyncio.run(main())
    assert "drift scoring failed for 1 requests" in caplog.text
    assert monitor.n_images == 3
