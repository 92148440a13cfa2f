"""A bounded load generator for the demo and tests: single-image requests at a fixed rate, to loopback only.

Requests are sent open-loop (on a clock, not after the previous answer) so a slow model sees the same offered
load as a fast one; in-flight requests are capped and what could not be sent in time is counted as skipped.
With ``feedback`` each answered prediction gets its true label from the reference test set.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlparse

import numpy as np

MAX_RATE = 1000.0
MAX_DURATION_S = 3600.0
MAX_INFLIGHT = 64


def require_loopback(url: str) -> str:
    """Return ``url`` without a trailing slash if its host is loopback; raise ``ValueError`` otherwise."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    if parsed.scheme not in ("http", "https") or not host:
        raise ValueError(f"not an http(s) URL: {url!r}")
    if host != "localhost":
        try:
            if not ipaddress.ip_address(host).is_loopback:
                raise ValueError(f"refusing non-loopback host {host!r}: mlcd traffic only targets 127.0.0.1")
        except ValueError as exc:
            if "refusing" in str(exc):
                raise
            raise ValueError(f"refusing host {host!r}: use 127.0.0.1, ::1 or localhost") from None
    return url.rstrip("/")


@dataclass
class TrafficReport:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    feedback_sent: int = 0
    correct: int = 0
    by_variant: Counter[str] = field(default_factory=Counter)
    by_version: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    elapsed_s: float = 0.0

    def summary(self) -> str:
        acc = f", accuracy on feedback {self.correct / self.feedback_sent:.1%}" if self.feedback_sent else ""
        return (
            f"{self.sent} sent in {self.elapsed_s:.1f}s: {self.ok} ok, {self.failed} failed, {self.skipped} skipped; "
            f"variants {dict(self.by_variant)}, versions {dict(self.by_version)}{acc}"
        )


async def _run(
    url: str,
    rate: float,
    duration: float,
    images: np.ndarray,
    labels: np.ndarray | None,
    clients: int,
    seed: int,
    feedback_token: str | None = None,
) -> TrafficReport:
    import httpx

    rng = np.random.default_rng(seed)
    report = TrafficReport()
    sem = asyncio.Semaphore(MAX_INFLIGHT)
    tasks: set[asyncio.Task[None]] = set()
    limits = httpx.Limits(max_connections=MAX_INFLIGHT, max_keepalive_connections=MAX_INFLIGHT)
    auth = {"Authorization": f"Bearer {feedback_token}"} if feedback_token else {}
    async with httpx.AsyncClient(base_url=url, timeout=10.0, limits=limits) as client:

        async def one(i: int) -> None:
            try:
                payload: dict[str, object] = {"images": [images[i].tolist()]}
                if clients:
                    payload["client_id"] = f"client-{int(rng.integers(clients))}"
                resp = await client.post("/predict", json=payload)
                report.statuses[resp.status_code] += 1
                if resp.status_code != 200:
                    report.failed += 1
                    return
                body = resp.json()
                report.ok += 1
                # A gateway with MLCD_EXPOSE_VARIANT=false does not say who answered.
                report.by_variant[body.get("variant", "hidden")] += 1
                report.by_version[body.get("version", "hidden")] += 1
                if labels is not None:
                    pred = body["predictions"][0]
                    fb = await client.post(
                        "/feedback", json={"prediction_id": pred["prediction_id"], "label": int(labels[i])},
                        headers=auth,
                    )
                    if fb.status_code == 200:
                        report.feedback_sent += 1
                        report.correct += int(fb.json()["correct"])
            except httpx.HTTPError:
                report.failed += 1
            finally:
                sem.release()

        start = time.perf_counter()
        n = int(rate * duration)
        for k in range(n):
            delay = start + k / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if sem.locked():
                report.skipped += 1  # the server is behind; do not pile up unbounded work
                continue
            await sem.acquire()
            report.sent += 1
            task = asyncio.create_task(one(int(rng.integers(len(images)))))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
        report.elapsed_s = time.perf_counter() - start
    return report


def run_traffic(
    url: str,
    rate: float,
    duration: float,
    feedback: bool = False,
    clients: int = 0,
    seed: int = 0,
    images: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    feedback_token: str | None = None,
) -> TrafficReport:
    """Send ``rate`` single-image requests per second for ``duration`` seconds to a loopback gateway.

    Args:
        url: the gateway, ``http://127.0.0.1:PORT``; other hosts are refused.
        rate: requests per second, 0 < rate <= 1000.
        duration: seconds, 0 < duration <= 3600.
        feedback: post the true label of each answered image to ``/feedback``.
        clients: send a ``client_id`` drawn from this many clients (sticky routing); 0 sends none.
        images, labels: the images to send (default: the reference test set).
        feedback_token: the gateway's ``/feedback`` token (default ``MLCD_FEEDBACK_TOKEN``); feedback without
            one is refused here, in one line, rather than by every request.
    """
    url = require_loopback(url)
    if not 0 < rate <= MAX_RATE:
        raise ValueError(f"rate must be in (0, {MAX_RATE:g}] requests/s, got {rate}")
    if not 0 < duration <= MAX_DURATION_S:
        raise ValueError(f"duration must be in (0, {MAX_DURATION_S:g}] s, got {duration}")
    if images is None:
        from mlcd.data.reference import load_reference

        ref = load_reference()
        images, labels = ref.x_test, ref.y_test
    if feedback:
        import os

        feedback_token = feedback_token or os.environ.get("MLCD_FEEDBACK_TOKEN") or None
        if not feedback_token:
            raise ValueError("feedback needs the gateway's feedback token: set MLCD_FEEDBACK_TOKEN")
    return asyncio.run(_run(url, rate, duration, images, labels if feedback else None, clients, seed,
                            feedback_token if feedback else None))
