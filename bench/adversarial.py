"""Adversarial rollback benchmark (issue #23): an attacker who sends a stated share of the traffic, with the
client ids and inputs of its choice, must neither roll back a healthy canary nor save a one-class one.

Each trial is the REAL gateway (``mlcd.serving.app.Gateway``, in process: routing, evidence rules, metrics) with
two real digit classifiers (nearest class-mean on MNIST's two halves) or a one-class model (always 3) as the
canary at 10 %, and the REAL guard (``Guard.poll`` every 2 s on the gateway's own metrics, the samples
``/metrics`` prints) for up to 45 polls (90 s). Genuine traffic: 100 single-image requests per poll from 300 client
addresses, real test digits, routed at random by the gateway. The attacker sends ``--share`` of all requests
from one address, in the three ways the issue found:

* at a healthy canary, blank images (to fail it): half **pinned** (``/v2/models/{m}/versions/{v}/infer``
  straight to the canary), half **sticky** (a ``client_id`` it found on the canary by asking the gateway, which
  says who answered);
* at stable, to save a one-class canary, digits stable answers 3 to, 64 per request (so stable looks one-class
  too): two thirds **pinned** to stable, one third randomised **volume** to outweigh everyone in the window.
 The same attack runs against the gateway with the evidence rules off
(``evidence_max_share=1`` and pinned/sticky traffic counted: what the gateway did before #23), so each row has
its control in the same run.

Usage: ``python bench/adversarial.py [--trials 20] [--share 0.3]`` (about two minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "include"))

POLLS = 45
GENUINE_PER_POLL = 100
GENUINE_CLIENTS = 300
WEIGHT = 10
VOLUME_BATCH = 64


def centroid_model(x: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    centroids = np.stack([x[y == k].reshape(-1, 784).mean(axis=0) for k in range(10)]).astype(np.float32)
    sq = (centroids ** 2).sum(axis=1)

    def predict(batch: np.ndarray) -> np.ndarray:
        flat = batch.reshape(len(batch), 784).astype(np.float32)
        d = (sq[None] - 2 * flat @ centroids.T) / 1e5
        e = np.exp(-(d - d.min(axis=1, keepdims=True)))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    return predict


def one_class(batch: np.ndarray) -> np.ndarray:
    return np.tile(np.eye(10, dtype=np.float32)[3], (len(batch), 1))


@dataclass
class Trial:
    outcome: str  # "rolled back" or "kept"
    at_s: float | None
    reason: str = ""


class Unguarded:
    """The gateway as it was before #23, for the control rows: every request is evidence (no share bound)."""

    @staticmethod
    def patch(gw: Any) -> None:
        gw._unrandomised = lambda n, client_id, version, client: None  # noqa: SLF001 - the control's whole point


async def trial(models: dict[str, Any], canary: str, attack: bool, guarded: bool, share: float, seed: int,
                digits: np.ndarray, blank: np.ndarray, threes: np.ndarray, home: Path) -> Trial:
    from mlcd.guard.watch import Decision, Guard, GuardConfig, scrape_from_families
    from mlcd.rollout.analysis import GuardThresholds
    from mlcd.serving.app import CANARY, Gateway
    from mlcd.serving.config import GatewayConfig

    config = GatewayConfig(model_name="adv", tracking_uri="http://127.0.0.1:9", admin_token=None,
                           state_path=home / f"s{seed}.json", evidence_exempt=(),
                           evidence_max_share=0.1 if guarded else 1.0)
    gw = Gateway(config, lambda v: models[v])
    if not guarded:
        Unguarded.patch(gw)
    await gw.set_routes("1", canary, WEIGHT, persist=False)
    rng = np.random.default_rng(seed)
    gw.rng.seed(seed)
    sticky = ""
    for i in range(10_000):  # the attacker asks the gateway until an id of its own lands on the canary
        if (await gw.route(blank, f"attacker-{i}", client="probe")).variant == CANARY:
            sticky = f"attacker-{i}"
            break
    for metric in (gw.metrics.requests, gw.metrics.predictions, gw.metrics.latency, gw.metrics.errors,
                   gw.metrics.unrandomised_requests):
        metric.clear()  # the attacker's probing is not part of the trial
    clock = [1000.0]
    # Latency is not what this attacker steers (the models' work does not depend on the inputs), and in-process
    # timings on a shared 2-core machine jitter by milliseconds: only a 50 ms slowdown fails here.
    thresholds = GuardThresholds(min_latency_increase_s=0.05)
    guard = Guard(GuardConfig("adv", poll_interval_s=2.0, thresholds=thresholds),
                  scrape=lambda _url: scrape_from_families(list(gw.metrics.registry.collect())),
                  clock=lambda: clock[0])
    result = guard.poll()

    async def serve(x: np.ndarray, client_id: str | None = None, version: str | None = None,
                    client: str = "198.51.100.66") -> None:
        gw.remember(await gw.route(x, client_id, version, client=client))  # as /predict and V2 answer

    attacker_requests = int(round(GENUINE_PER_POLL * share / (1 - share))) if attack else 0
    for poll in range(POLLS):
        for i in rng.integers(len(digits), size=GENUINE_PER_POLL):
            who = int(rng.integers(GENUINE_CLIENTS))
            await serve(digits[i:i + 1], client=f"10.0.{who // 250}.{who % 250}")
        for k in range(attacker_requests):
            if canary == "2":  # fail the healthy canary: blank images at it, pinned or by a sticky id
                await (serve(blank, version=canary) if k % 2 == 0 else serve(blank, sticky))
            else:  # save the one-class canary: make stable look one-class too, pinned or by volume
                batch = threes[rng.integers(len(threes), size=VOLUME_BATCH)]
                await (serve(batch) if k % 3 == 2 else serve(batch, version="1"))
        clock[0] += 2.0
        result = guard.poll(result.state)
        if result.decision is Decision.BREACH:
            return Trial("rolled back", (poll + 1) * 2.0, result.reason)
        if result.decision is not Decision.WATCH:
            break
    return Trial("kept", None)


def run(trials: int, share: float) -> list[str]:
    from mlcd.data.reference import load_reference

    ref = load_reference()
    x, y = np.asarray(ref.x_train, dtype=np.float32), np.asarray(ref.y_train)
    half = len(x) // 2
    models = {"1": centroid_model(x[:half], y[:half]), "2": centroid_model(x[half:], y[half:]), "3": one_class}
    digits = np.asarray(ref.x_test[: len(ref.x_test) // 2], dtype=np.float32)
    pool = np.asarray(ref.x_test[len(ref.x_test) // 2:], dtype=np.float32)
    threes = pool[models["1"](pool).argmax(axis=1) == 3]
    blank = np.zeros((1, 28, 28), dtype=np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, canary, attack, guarded in (
            ("healthy canary, no attacker", "2", False, True),
            ("healthy canary, attacker, evidence rules", "2", True, True),
            ("healthy canary, attacker, rules off (control)", "2", True, False),
            ("one-class canary, no attacker", "3", False, True),
            ("one-class canary, attacker, evidence rules", "3", True, True),
            ("one-class canary, attacker, rules off (control)", "3", True, False),
        ):
            started = time.monotonic()
            ts = [asyncio.run(trial(models, canary, attack, guarded, share, seed, digits, blank, threes, Path(tmp)))
                  for seed in range(trials)]
            back = [t for t in ts if t.outcome == "rolled back"]
            med = f"{statistics.median(t.at_s for t in back if t.at_s is not None):.0f}s" if back else "-"
            want = "kept" if canary == "2" else "rolled back"
            right = sum(t.outcome == want for t in ts)
            rows.append(f"  {label:50s} rolled back {len(back):2d}/{trials}  right {right:2d}/{trials}  "
                        f"median time to rollback {med:>5s}  ({time.monotonic() - started:.0f}s)")
            print(rows[-1], flush=True)
            wrong = next((t for t in ts if t.outcome != want), None)
            if wrong is not None and wrong.reason:
                rows.append(f"      e.g. {wrong.reason[:200]}")
                print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--share", type=float, default=0.3, help="the attacker's share of all requests (0-1)")
    args = parser.parse_args()
    if not 0 < args.share < 1 or not 0 < args.trials <= 200:
        parser.error("--share must be in (0, 1) and --trials in 1..200")
    print(f"ADVERSARIAL: real gateway in process, canary at {WEIGHT}%, guard polls every 2s for up to {POLLS} polls; "
          f"genuine {GENUINE_PER_POLL} requests/poll from {GENUINE_CLIENTS} addresses; attacker {args.share:.0%} of "
          f"requests from one address (pinned, sticky, {VOLUME_BATCH}-image volume); {args.trials} trials each; "
          "right = a healthy canary kept, a one-class one rolled back",
          flush=True)
    run(args.trials, args.share)


if __name__ == "__main__":
    main()
