"""Rollback benchmark: how fast the guard takes traffic off a broken canary, and how often it wrongly does so.

Everything real and on 127.0.0.1: an MLflow server started here, the gateway (``mlcd serve``) as its own process,
tiny Keras models logged to MLflow (two honest retrains and one that always answers class 3, see
``tests/modelkit.py``), bounded open-loop traffic at 50 requests/s, and the guard (:mod:`mlcd.guard.watch`) polling
``/metrics`` every 2 s with the judge's default thresholds. Processes are reused across trials; each trial
registers a fresh version (the rollout record makes ``rolled_back`` final).

* **broken trials**: the broken version becomes canary at the rollout's first step (5 %); measured from the
  first answer the canary gives to the moment the router has put 100 % of traffic back on stable (the rollback
  then records the evidence in the registry; that time is printed too). Median over the trials.
* **healthy trials**: an honest retrain becomes canary at 25 % (so every check has data) and is watched for a
  bounded window; any breach is a false rollback. Then it is promoted and the next trial canaries the other
  retrain against it.

Peer: Flagger's default analysis (``interval: 1m``) needs one full interval per failed check, and rolls back
after ``threshold`` failed checks: at least 60 s, 300 s with the threshold of 5 its examples use. (Flagger's
built-in checks are request success rate and latency; a model that answers 200 OK with the wrong class passes
both, so with defaults it would not be rolled back at all.)

Usage: ``python bench/rollback.py [--broken 5] [--healthy 20] [--window 16]`` (about 10 minutes).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist.npz"
if "MLCD_DATA" not in os.environ and SHARED_MNIST.exists():
    os.environ["MLCD_DATA"] = str(SHARED_MNIST)

MODEL = "bench-rollback"
RATE = 50.0
FLAGGER_INTERVAL_S = 60.0


class TimedRouter:
    """The real router, noting when the canary was taken out of the routes (the moment users are safe)."""

    def __init__(self, router: Any) -> None:
        self.router = router
        self.stable_only_at: float | None = None

    def set_routes(self, stable: str, canary: str | None, canary_weight: int) -> Any:
        status = self.router.set_routes(stable, canary, canary_weight)
        if canary is None or canary_weight == 0:
            self.stable_only_at = time.monotonic()
        return status

    def get_routes(self) -> Any:
        return self.router.get_routes()


def _wait_healthy(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # up, without a model yet
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"gateway {url} not up after {timeout:.0f}s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--broken", type=int, default=5, help="broken-canary trials (median reported)")
    ap.add_argument("--healthy", type=int, default=20, help="healthy-canary trials (false rollbacks counted)")
    ap.add_argument("--window", type=float, default=16.0, help="seconds each healthy canary is watched")
    ap.add_argument("--broken-weight", type=int, default=5, help="canary weight of broken trials (percent)")
    ap.add_argument("--healthy-weight", type=int, default=25, help="canary weight of healthy trials (percent)")
    ap.add_argument("--poll", type=float, default=2.0, help="guard poll interval in seconds")
    args = ap.parse_args()

    from mlcd.data.reference import load_reference
    from mlcd.guard.watch import Decision, Guard, GuardConfig, rollback
    from mlcd.mlflow_server import LocalMlflowServer, free_port
    from mlcd.registry import ModelRegistry
    from mlcd.rollout.router import LocalGatewayRouter
    from tests.modelkit import TOKEN, logged_models, register, traffic

    started = time.monotonic()
    ref = load_reference()
    root = Path(tempfile.mkdtemp(prefix="mlcd-bench-rollback-"))
    mlflow = LocalMlflowServer(root=root / "mlflow").start()
    gateway: subprocess.Popen[bytes] | None = None
    try:
        uris = logged_models(mlflow.url, ref.x_train[:2000], ref.y_train[:2000])
        registry = ModelRegistry(mlflow.url, MODEL)
        stable = register(mlflow.url, MODEL, uris["healthy_a"])
        registry.bootstrap_champion(stable, "bench")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.url, "MLCD_MODEL_NAME": MODEL,
               "MLCD_ADMIN_TOKEN": TOKEN, "MLCD_HOME": str(root / "home"), "MLCD_GATEWAY_URL": url}
        log = (root / "gateway.log").open("wb")
        gateway = subprocess.Popen([sys.executable, "-m", "mlcd.cli", "serve", "--port", str(port)], env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
        _wait_healthy(url)
        router = TimedRouter(LocalGatewayRouter(url, TOKEN))
        router.set_routes(stable, None, 0)
        images = ref.x_test[:2000]
        print(f"setup {time.monotonic() - started:.0f}s: MLflow {mlflow.url}, gateway {url} (own process), "
              f"{RATE:g} requests/s, guard poll {args.poll:g}s, judge defaults", flush=True)

        to_stable: list[float] = []
        to_recorded: list[float] = []
        false_rollbacks = 0
        with traffic(url, images, rate=RATE, max_s=1500, workers=6) as load:
            time.sleep(2)
            for i in range(args.broken):
                v = register(mlflow.url, MODEL, uris["broken"])
                registry.start_canary(v, "bench", "broken canary")
                router.stable_only_at = None
                router.set_routes(stable, v, args.broken_weight)
                guard = Guard(GuardConfig(url, version=v, poll_interval_s=args.poll, grace_s=30))
                state, result = None, None
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    result = guard.poll(state)
                    if result.decision is not Decision.WATCH:
                        break
                    state = result.state
                    time.sleep(args.poll)
                assert result is not None and result.decision is Decision.BREACH, result and result.reason
                rollback(registry, router, v, result.reason, result.as_dict(), "bench")
                recorded = time.monotonic()
                first = load.first_seen.get(v)
                assert first is not None and router.stable_only_at is not None
                to_stable.append(router.stable_only_at - first)
                to_recorded.append(recorded - first)
                failed = [c["name"] for c in result.as_dict()["verdict"]["checks"] if c["outcome"] == "fail"]
                print(f"broken  {i + 1:2d}/{args.broken}: version {v} at {args.broken_weight}%: 100% stable "
                      f"{to_stable[-1]:5.1f}s after its first answer (recorded {to_recorded[-1]:5.1f}s), "
                      f"poll {result.state.look}, {load.by_version[v]} canary answers, failed {failed}",
                      flush=True)

            kinds = ["healthy_b", "healthy_a"]
            for i in range(args.healthy):
                v = register(mlflow.url, MODEL, uris[kinds[i % 2]])
                registry.start_canary(v, "bench", "healthy canary")
                router.set_routes(stable, v, args.healthy_weight)
                guard = Guard(GuardConfig(url, version=v, poll_interval_s=args.poll))
                state, outcome, last = None, "kept", None
                end = time.monotonic() + args.window
                while time.monotonic() < end:
                    result = guard.poll(state)
                    state, last = result.state, result
                    if result.decision is Decision.BREACH:
                        outcome = "FALSE ROLLBACK: " + result.reason
                        false_rollbacks += 1
                        rollback(registry, router, v, result.reason, result.as_dict(), "bench")
                        break
                    time.sleep(args.poll)
                if outcome == "kept":
                    registry.promote(v, "bench", "healthy canary kept")
                    router.set_routes(v, None, 0)
                    stable = v
                verdict = last.verdict.summary[:110] if last and last.verdict else "-"
                print(f"healthy {i + 1:2d}/{args.healthy}: version {v} at {args.healthy_weight}% for "
                      f"{args.window:g}s, {load.by_version[v]} canary answers: {outcome} ({verdict})", flush=True)
        print(f"traffic: {load.sent} requests, {load.failed} failed")

        med = statistics.median(to_stable)
        med_rec = statistics.median(to_recorded)
        print()
        print(f"{'':34s}{'mlcd guard':>14s}{'Flagger default':>18s}")
        print(f"{'rollback, median of ' + str(len(to_stable)) + ' (s)':34s}{med:14.1f}"
              f"{'>= ' + format(FLAGGER_INTERVAL_S, '.0f'):>18s}")
        print(f"{'  range (s)':34s}{f'{min(to_stable):.1f}-{max(to_stable):.1f}':>14s}{'300 at threshold 5':>20s}")
        print(f"{'  median to registry recorded (s)':34s}{med_rec:14.1f}")
        print(f"{'false rollbacks / healthy trials':34s}{f'{false_rollbacks}/{args.healthy}':>14s}{'-':>18s}")
        print(f"ratio Flagger minimum / mlcd: {FLAGGER_INTERVAL_S / med:.1f}x faster "
              f"({5 * FLAGGER_INTERVAL_S / med:.1f}x at threshold 5)")
        print(f"targets: rollback under 30 s -> {'MET' if med < 30 else 'MISSED'}; zero false rollbacks in "
              f"{args.healthy} -> {'MET' if false_rollbacks == 0 and args.healthy >= 20 else 'MISSED'}")
        print(f"whole bench {time.monotonic() - started:.0f}s")
    finally:
        if gateway is not None:
            gateway.terminate()
            try:
                gateway.wait(20)
            except subprocess.TimeoutExpired:
                gateway.kill()
        mlflow.stop()


if __name__ == "__main__":
    main()
