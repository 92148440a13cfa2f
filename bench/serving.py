"""Serving benchmark: the mlcd gateway vs. MLflow's own scoring server, same model version, same load.

Both servers run as single processes on 127.0.0.1 and serve one registered version of the reference CNN
(briefly fitted on real MNIST). A closed-loop client (C threads, each sending its next single-image request when
the previous one is answered, keep-alive connections) drives each server for the same time at each concurrency.
Printed: requests/s, p50 and p99 latency, and the gateway/MLflow ratios; then the routing overhead: the gateway's
p50 at concurrency 1 with a 50 % canary (two loaded versions, same weights) against stable only, and the
in-process cost of one routing decision.

Then the Open Inference Protocol (KServe V2) comparison: MLServer 1.7.1 with mlserver-mlflow (adaptive batching
on, ``max_batch_size`` 64 and ``max_batch_time`` 2 ms, the gateway's own batching limits) serves the same version
over V2 beside the gateway's ``/v2/models/{name}/infer``; both get byte-identical V2 JSON requests (one FP32
``[1, 28, 28]`` image; MLServer refuses the binary tensor extension) from the same closed-loop client. MLServer's
pins (fastapi < 0.116, protobuf < 7) clash with ours, so it runs from its own virtualenv, created from PyPI on the
first run (``MLCD_BENCH_MLSERVER_VENV``, default ``$MLCD_HOME/bench/mlserver-venv``; a few minutes once).
Last, the ceiling: the same model called in-process on batches of 32, and the gateway's V2 throughput as a fraction
of it. ``--skip-mlflow`` leaves out the ``mlflow models serve`` part. Bounded: about 5 minutes on 2 cores.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from mlcd.mlflow_server import LocalMlflowServer, free_port

# Real MNIST when the shared copy is there (as `make bench` sets it), before mlcd reads its settings.
_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist.npz"
if "MLCD_DATA" not in os.environ and _SHARED.exists():
    os.environ["MLCD_DATA"] = str(_SHARED)

CONCURRENCY = (1, 8, 32)
SECONDS_PER_POINT = 6.0
WARMUP_REQUESTS = 60
MODEL = "bench-mnist-cnn"
TOKEN = "bench-token"


def train_and_register(tracking_uri: str) -> tuple[str, str]:
    """The reference CNN, fitted 1 epoch on 3,000 real images, logged twice (two versions, same weights)."""
    import mlflow
    import tensorflow as tf

    from mlcd.data.reference import load_reference
    from mlcd.registry import ModelRegistry
    from mlcd.training.tracking import seal_model

    ref = load_reference()
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([
        tf.keras.Input((28, 28)),
        tf.keras.layers.Rescaling(1 / 255),
        tf.keras.layers.Reshape((28, 28, 1)),
        tf.keras.layers.Conv2D(32, 3, activation="relu"),
        tf.keras.layers.MaxPooling2D(),
        tf.keras.layers.Conv2D(64, 3, activation="relu"),
        tf.keras.layers.MaxPooling2D(),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(64, activation="relu"),
        tf.keras.layers.Dense(10),
    ])
    model.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(ref.x_train[:3000], ref.y_train[:3000], epochs=1, batch_size=128, verbose=0)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("bench-serving")
    registry = ModelRegistry(tracking_uri, MODEL)
    versions = []
    for _ in range(2):
        with mlflow.start_run() as run:
            info = mlflow.tensorflow.log_model(model, name="model", pip_requirements=["tensorflow-cpu"])
        seal_model(info.model_uri, tracking_uri)  # as the trainer does: the gateway refuses an unsealed model
        versions.append(registry.register_run_model(run.info.run_id, info.model_uri))
    registry.bootstrap_champion(versions[0], "bench")
    return versions[0], versions[1]


def wait_http(url: str, timeout: float = 120.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} not healthy after {timeout:.0f}s")


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def closed_loop(port: int, path: str, bodies: list[bytes], concurrency: int, seconds: float) -> dict[str, float]:
    """C threads, each with its own keep-alive connection, for ``seconds``; latencies of 200 answers only."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    failures = [0] * concurrency
    stop_at = [0.0]
    start_evt = threading.Barrier(concurrency + 1)

    def worker(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Content-Type": "application/json"}
        start_evt.wait()
        i = k
        while time.perf_counter() < stop_at[0]:
            body = bodies[i % len(bodies)]
            i += concurrency
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            if ok:
                latencies[k].append(time.perf_counter() - t0)
            else:
                failures[k] += 1
        conn.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    t_start = time.perf_counter()
    stop_at[0] = t_start + seconds
    start_evt.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t_start
    lat = np.array([x for per in latencies for x in per])
    return {
        "rps": len(lat) / elapsed,
        "p50_ms": float(np.percentile(lat, 50) * 1000) if len(lat) else float("nan"),
        "p99_ms": float(np.percentile(lat, 99) * 1000) if len(lat) else float("nan"),
        "n": float(len(lat)),
        "failed": float(sum(failures)),
    }


def admin_routes(port: int, stable: str, canary: str | None, weight: int) -> None:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/admin/routes",
        data=json.dumps({"stable": stable, "canary": canary, "canary_weight": weight}).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(req, timeout=120).read()


MLSERVER_PINS = ("mlserver==1.7.1", "mlserver-mlflow==1.7.1", "tensorflow-cpu==2.21.0", "mlflow==3.17.2")


def mlserver_venv(home: Path) -> Path:
    """MLServer's own virtualenv (its pins clash with ours), created on first use; returns its ``bin``."""
    venv = Path(os.environ.get("MLCD_BENCH_MLSERVER_VENV") or home / "bench" / "mlserver-venv")
    marker = venv / ".mlcd-installed"
    if not marker.exists():
        print(f"creating MLServer's virtualenv at {venv} ({' '.join(MLSERVER_PINS)}); a few minutes once",
              flush=True)
        base = Path(sys.base_prefix) / "bin" / "python3"
        subprocess.run([str(base), "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *MLSERVER_PINS], check=True)
        marker.write_text(" ".join(MLSERVER_PINS) + "\n")
    return venv / "bin"


def start_mlserver(bin_dir: Path, tracking_uri: str, version: str, root: Path, env: dict[str, str]) -> tuple[
        subprocess.Popen[bytes], int]:
    """MLServer serving ``models:/MODEL/version`` (downloaded from the registry) with adaptive batching."""
    import mlflow

    model_dir = root / "mlserver" / MODEL
    model_dir.mkdir(parents=True)
    local = mlflow.artifacts.download_artifacts(f"models:/{MODEL}/{version}", tracking_uri=tracking_uri,
                                                dst_path=str(root / "mlserver-model"))
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    (root / "mlserver" / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port,
        "debug": False,
        # Inference in the server process, as the gateway does (a worker pool adds a process hop on 2 cores).
        "parallel_workers": 0,
    }))
    (model_dir / "model-settings.json").write_text(json.dumps({
        "name": MODEL, "implementation": "mlserver_mlflow.MLflowRuntime",
        "max_batch_size": 64, "max_batch_time": 0.002,  # adaptive batching, the gateway's limits
        "parameters": {"uri": local, "version": version},
    }))
    menv = {k: v for k, v in env.items() if not k.startswith(("MLFLOW_", "MLCD_", "PYTHONPATH"))}
    menv["PATH"] = f"{bin_dir}{os.pathsep}{menv.get('PATH', '')}"
    proc = start([str(bin_dir / "mlserver"), "start", str(root / "mlserver")], menv, root / "mlserver.log")
    return proc, http_port


def v2_body(img: np.ndarray) -> bytes:
    """One V2 request, the same bytes for both servers (``content_type: np`` tells MLServer's codec it's a tensor)."""
    return json.dumps({"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "FP32",
                                   "parameters": {"content_type": "np"},
                                   "data": img.astype(np.float32).ravel().tolist()}]}).encode()


def in_process_ceiling(tracking_uri: str, version: str, images: np.ndarray, seconds: float = 6.0) -> float:
    """Images/s of the same model called in-process on batches of 32 (what the gateway's batcher calls)."""
    from mlcd.model_io import load_predictor

    predictor = load_predictor(f"models:/{MODEL}/{version}", tracking_uri=tracking_uri)
    batch = images[:32].astype(np.float32)
    for _ in range(5):
        predictor.predict_proba(batch)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        predictor.predict_proba(batch)
        n += len(batch)
    return n / (time.perf_counter() - t0)


def v2_comparison(gw_port: int, tracking_uri: str, version: str, images: np.ndarray, root: Path,
                  env: dict[str, str]) -> None:
    from mlcd.settings import get_settings

    bin_dir = mlserver_venv(get_settings().home)  # the user's MLCD_HOME, kept between runs (not the bench's temp)
    ms, ms_port = start_mlserver(bin_dir, tracking_uri, version, root, env)
    path = f"/v2/models/{MODEL}/infer"
    bodies = [v2_body(img) for img in images]
    try:
        try:
            wait_http(f"http://127.0.0.1:{ms_port}/v2/models/{MODEL}/ready", timeout=240, proc=ms)
        except RuntimeError:
            print((root / "mlserver.log").read_text(errors="replace")[-3000:], file=sys.stderr)
            raise
        for port in (gw_port, ms_port):
            closed_loop(port, path, bodies[:WARMUP_REQUESTS], 4, 1.5)
        print()
        print("Open Inference Protocol (V2 REST), same JSON request bytes to both: one FP32 [1, 28, 28] image; "
              "MLServer 1.7.1 + mlserver-mlflow, adaptive batching max_batch_size 64, max_batch_time 2 ms")
        print(f"{'conc':>4}  {'server':<14}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'failed':>8}")
        rows = []
        for c in CONCURRENCY:
            g = closed_loop(gw_port, path, bodies, c, SECONDS_PER_POINT)
            m = closed_loop(ms_port, path, bodies, c, SECONDS_PER_POINT)
            for name, r in (("mlcd gateway", g), ("mlserver", m)):
                print(f"{c:>4}  {name:<14}{r['rps']:>9.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['failed']:>8.0f}")
            rows.append((c, g, m))
        print()
        print(f"{'conc':>4}  {'throughput ratio':>17}  {'p99 ratio (gw/mlserver)':>24}")
        for c, g, m in rows:
            print(f"{c:>4}  {g['rps'] / m['rps']:>16.2f}x  {g['p99_ms'] / m['p99_ms']:>23.2f}x")
    finally:
        stop(ms)
    ceiling = in_process_ceiling(tracking_uri, version, images)
    best = max(g["rps"] for _, g, _ in rows)
    print()
    print(f"ceiling: the same model in-process on batches of 32: {ceiling:.0f} images/s; gateway V2 at its best "
          f"({best:.0f} single-image req/s) = {best / ceiling:.0%} of it")


def routing_decision_us() -> float:
    """In-process cost of one routing decision with a sticky client id (median of 5 × 20,000)."""
    import random

    from mlcd.serving.app import choose_variant

    rng = random.Random(0)
    ids = [f"client-{i}" for i in range(1000)]
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for i in range(20_000):
            choose_variant(50, ids[i % 1000], rng)
        runs.append((time.perf_counter() - t0) / 20_000 * 1e6)
    return statistics.median(runs)


def main(argv: list[str] | None = None) -> int:
    from mlcd.data.reference import load_reference

    args = sys.argv[1:] if argv is None else argv
    skip_mlflow = "--skip-mlflow" in args

    t_all = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="mlcd-bench-serving-"))
    images = load_reference().x_test[:256]
    gw_bodies = [json.dumps({"images": [img.tolist()]}).encode() for img in images]
    mlflow_bodies = [json.dumps({"inputs": [img.astype(np.float32).tolist()]}).encode() for img in images]
    procs: list[subprocess.Popen[bytes]] = []
    server = LocalMlflowServer(root=root / "mlflow").start()
    try:
        v1, v2 = train_and_register(server.url)
        env = dict(os.environ, MLFLOW_TRACKING_URI=server.url, MLCD_MODEL_NAME=MODEL, MLCD_ADMIN_TOKEN=TOKEN,
                   MLCD_HOME=str(root / "home"), TF_CPP_MIN_LOG_LEVEL="2")
        env.pop("MLCD_SERVE_VERSION", None)
        gw_port, ml_port = free_port(), free_port()
        bin_dir = Path(sys.executable).parent
        # `mlflow models serve` execs `uvicorn` by name: the venv's bin must be on PATH.
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
        mlflow_bin = shutil.which("mlflow", path=str(bin_dir)) or "mlflow"
        mlcd_bin = shutil.which("mlcd", path=str(bin_dir)) or "mlcd"
        gw = start([mlcd_bin, "serve", "--port", str(gw_port)], env, root / "gateway.log")
        procs.append(gw)
        ml = None if skip_mlflow else start(
            [mlflow_bin, "models", "serve", "-m", f"models:/{MODEL}/{v1}", "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(ml_port), "--workers", "1"], env, root / "mlflow-serve.log")
        if ml is not None:
            procs.append(ml)
        for url, proc, log in ((f"http://127.0.0.1:{gw_port}/healthz", gw, "gateway.log"),
                               (f"http://127.0.0.1:{ml_port}/health", ml, "mlflow-serve.log")):
            if proc is None:
                continue
            try:
                wait_http(url, proc=proc)
            except RuntimeError:
                print((root / log).read_text(errors="replace")[-3000:], file=sys.stderr)
                raise
        if skip_mlflow:
            v2_comparison(gw_port, server.url, v1, images, root, env)
            print(f"total bench time {time.perf_counter() - t_all:.0f} s")
            return 0
        for port, path, bodies in ((gw_port, "/predict", gw_bodies), (ml_port, "/invocations", mlflow_bodies)):
            closed_loop(port, path, bodies[:WARMUP_REQUESTS], 4, 1.5)  # warm both (graph tracing, JIT paths)

        print(f"model: reference CNN, version {v1} of {MODEL}; single-image requests; "
              f"{SECONDS_PER_POINT:.0f} s closed loop per point; 2-core machine")
        print(f"{'conc':>4}  {'server':<14}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'failed':>8}")
        rows = []
        for c in CONCURRENCY:
            g = closed_loop(gw_port, "/predict", gw_bodies, c, SECONDS_PER_POINT)
            m = closed_loop(ml_port, "/invocations", mlflow_bodies, c, SECONDS_PER_POINT)
            for name, r in (("mlcd gateway", g), ("mlflow serve", m)):
                print(f"{c:>4}  {name:<14}{r['rps']:>9.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['failed']:>8.0f}")
            rows.append((c, g, m))
        print()
        print(f"{'conc':>4}  {'throughput ratio':>17}  {'p99 ratio (gw/mlflow)':>22}")
        for c, g, m in rows:
            print(f"{c:>4}  {g['rps'] / m['rps']:>16.2f}x  {g['p99_ms'] / m['p99_ms']:>21.2f}x")

        # Routing overhead: same model twice (stable + 50 % canary) vs. stable only, concurrency 1.
        base = []
        routed = []
        for _ in range(2):
            admin_routes(gw_port, v1, None, 0)
            base.append(closed_loop(gw_port, "/predict", gw_bodies, 1, 3.0)["p50_ms"])
            admin_routes(gw_port, v1, v2, 50)
            routed.append(closed_loop(gw_port, "/predict", gw_bodies, 1, 3.0)["p50_ms"])
        decision = routing_decision_us()
        print()
        print(f"routing overhead at p50, concurrency 1: stable only {statistics.median(base):.3f} ms, "
              f"50 % canary {statistics.median(routed):.3f} ms -> "
              f"{statistics.median(routed) - statistics.median(base):+.3f} ms")
        print(f"routing decision in-process (sticky hash + weight): {decision:.2f} us")
        admin_routes(gw_port, v1, None, 0)
        v2_comparison(gw_port, server.url, v1, images, root, env)
        print(f"total bench time {time.perf_counter() - t_all:.0f} s")
    finally:
        for p in procs:
            stop(p)
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
