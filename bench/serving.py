"""Serving benchmark: the mlcd gateway vs. MLflow's own scoring server and MLServer, same model version, same load.

Every server runs as one process on 127.0.0.1 and serves one registered version of the reference CNN (briefly
fitted on real MNIST). The load comes from Debian's ``wrk`` (C, event-driven, one thread per 16 connections),
so the client costs the two cores little: C keep-alive connections, each sending its next single-image request
when the previous one is answered (closed loop), the same prepared request bytes for every server, 6 s per
point (``bench/wrk_post.lua`` holds the bodies). Printed per point: requests/s, p50 and p99 latency, and where
the CPU went: the server's own CPU per request (utime + stime of every process in its session, from ``/proc``),
the load generator's (``wait4`` rusage), and the machine's busy share of both cores with what the other
processes on it (not this bench) used. Without ``wrk`` the script says so and falls back to Python client
threads, which then compete with the server for the cores (the figures say less).

Sections: ``/predict`` against ``mlflow models serve`` (``--skip-mlflow`` leaves it out); the routing overhead
(p50 at concurrency 1, 50 % canary on a second loaded version vs. stable only) and one routing decision
in-process; the Open Inference Protocol (KServe V2) against MLServer 1.7.1 + mlserver-mlflow (adaptive batching
on, ``max_batch_size`` 64, ``max_batch_time`` 2 ms, the gateway's own limits), byte-identical V2 JSON requests
(one FP32 ``[1, 28, 28]`` image) to both, plus the gateway with the binary tensor extension (MLServer refuses
it). MLServer's pins (fastapi < 0.116, protobuf < 7) clash with ours, so it runs from its own virtualenv, created
from PyPI on the first run (``MLCD_BENCH_MLSERVER_VENV``, default ``$MLCD_HOME/bench/mlserver-venv``; a few
minutes once). Last, in the same run, the ceiling: the same model in-process on batches of 32, both as the
gateway's batcher calls it (one compiled graph, :mod:`mlcd.serving.compiled`) and as a plain eager Keras call,
with CPU per image, and the gateway's V2 throughput at concurrency 32 as a fraction of each; beside them, the
HTTP floor: a bare ASGI app (``bench/asgi_floor.py``) under the same uvicorn, reading the same bodies and doing
nothing, so what HTTP alone costs per request in one Python process is measured in the same run. Bounded: about
6 minutes on 2 cores.
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
WRK = shutil.which("wrk")
WRK_SCRIPT = Path(__file__).resolve().with_name("wrk_post.lua")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
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


def wait_http(url: str, timeout: float = 120.0, proc: subprocess.Popen[bytes] | None = None,
              method: str = "GET") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {proc.returncode}")
        try:
            req = urllib.request.Request(url, data=b"{}" if method == "POST" else None, method=method)
            with urllib.request.urlopen(req, timeout=2) as resp:
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


def closed_loop(port: int, path: str, bodies: list[bytes], concurrency: int, seconds: float,
                header_lengths: list[str] | None = None, ctype: str = "application/json") -> dict[str, float]:
    """C threads, each with its own keep-alive connection, for ``seconds``; latencies of 200 answers only.

    The fallback when ``wrk`` is missing (the client then shares the cores with the server)."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    failures = [0] * concurrency
    stop_at = [0.0]
    start_evt = threading.Barrier(concurrency + 1)

    def worker(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        start_evt.wait()
        i = k
        while time.perf_counter() < stop_at[0]:
            body = bodies[i % len(bodies)]
            headers = {"Content-Type": ctype}
            if header_lengths and header_lengths[i % len(bodies)]:
                headers["Inference-Header-Content-Length"] = header_lengths[i % len(bodies)]
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


def write_bodies(folder: Path, bodies: list[bytes], header_lengths: list[int] | None = None) -> Path:
    """The request bodies as files plus the ``manifest`` that ``bench/wrk_post.lua`` reads."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, body in enumerate(bodies):
        (folder / f"b{i:04d}").write_bytes(body)
        lines.append(f"b{i:04d}" + (f" {header_lengths[i]}" if header_lengths else ""))
    (folder / "manifest").write_text("\n".join(lines) + "\n")
    return folder


def session_cpu_s(sid: int) -> float:
    """utime + stime of every live process in session ``sid`` (a server and its children: see :func:`start`)."""
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry.name}/stat").read_bytes()
        except OSError:
            continue  # exited meanwhile
        fields = raw[raw.rindex(b")") + 2:].split()  # after "pid (comm) ": state, ppid, pgrp, session, ...
        if int(fields[3]) == sid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all cores since boot, from ``/proc/stat``."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values[:8]) - idle, sum(values[:8])


def run_wrk(port: int, path: str, bodies: Path, concurrency: int, seconds: float, ctype: str) -> dict[str, float]:
    """``wrk`` closed loop (one thread, C connections); latencies and counts from its Lua ``done``, CPU by wait4."""
    assert WRK is not None
    env = dict(os.environ, MLCD_WRK_BODIES=str(bodies), MLCD_WRK_PATH=path, MLCD_WRK_CTYPE=ctype)
    cmd = [WRK, "-t", "1", "-c", str(concurrency), "-d", f"{max(1, round(seconds))}s", "--timeout", "30s",
           "-s", str(WRK_SCRIPT), f"http://127.0.0.1:{port}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    out = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    line = next((ln for ln in out.splitlines() if ln.startswith("MLCD_WRK ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}): {out[-1000:]}")
    r = json.loads(line.removeprefix("MLCD_WRK "))
    elapsed = r["duration_us"] / 1e6
    ok = r["requests"] - r["status_errors"]
    return {
        "rps": ok / elapsed, "p50_ms": r["p50_us"] / 1000, "p99_ms": r["p99_us"] / 1000, "n": float(ok),
        "failed": float(r["status_errors"] + r["socket_errors"]), "elapsed": elapsed,
        "client_cpu_s": usage.ru_utime + usage.ru_stime,
    }


def measure(server_pid: int, port: int, path: str, bodies: Path, concurrency: int, seconds: float,
            ctype: str = "application/json") -> dict[str, float]:
    """One load point: throughput and latency, plus the server's, the client's and everyone else's CPU."""
    cpu0, (busy0, total0) = session_cpu_s(server_pid), machine_ticks()
    if WRK is not None:
        r = run_wrk(port, path, bodies, concurrency, seconds, ctype)
    else:
        t0, c0 = time.perf_counter(), time.process_time()
        entries = [line.partition(" ")[::2] for line in (bodies / "manifest").read_text().splitlines()]
        r = closed_loop(port, path, [(bodies / name).read_bytes() for name, _ in entries], concurrency, seconds,
                        [hlen for _, hlen in entries], ctype)
        r["elapsed"], r["client_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
    server_cpu = session_cpu_s(server_pid) - cpu0
    busy1, total1 = machine_ticks()
    cores = os.cpu_count() or 1
    busy_s = (busy1 - busy0) / CLOCK_TICKS
    n = max(r["n"] + r["failed"], 1.0)
    r["server_ms"] = server_cpu / n * 1000
    r["client_ms"] = r["client_cpu_s"] / n * 1000
    r["busy_pct"] = 100 * (busy1 - busy0) / max(total1 - total0, 1)
    r["others_pct"] = 100 * max(busy_s - server_cpu - r["client_cpu_s"], 0.0) / (r["elapsed"] * cores)
    return r


HEADER = (f"{'conc':>4}  {'server':<20}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'failed':>7}"
          f"{'srv CPU ms/req':>15}{'client ms/req':>14}{'busy %':>7}{'others %':>9}")


def row(c: int, name: str, r: dict[str, float]) -> str:
    return (f"{c:>4}  {name:<20}{r['rps']:>8.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['failed']:>7.0f}"
            f"{r['server_ms']:>15.3f}{r['client_ms']:>14.3f}{r['busy_pct']:>7.0f}{r['others_pct']:>9.0f}")


def load_generator_note() -> str:
    if WRK is not None:
        return f"load generator: wrk (one thread, C keep-alive connections, closed loop), {WRK_SCRIPT.name}"
    return ("load generator: WARNING wrk is not installed (Debian: apt-get install wrk); Python client threads "
            "instead, on the same cores as the server: throughput and CPU figures are client-bound")


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
    """One V2 request, the same bytes for both servers (``content_type: np`` tells MLServer's codecs, request and
    input, that it is one NumPy tensor; without it MLServer's MLflow runtime hands the model the raw request)."""
    return json.dumps({"parameters": {"content_type": "np"},
                       "inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "FP32",
                                   "parameters": {"content_type": "np"},
                                   "data": img.astype(np.float32).ravel().tolist()}]}).encode()


def binary_v2_body(img: np.ndarray) -> tuple[bytes, int]:
    """The same image with the binary tensor extension: JSON header, then 784 little-endian FP32 values."""
    raw = img.astype("<f4").tobytes()
    head = json.dumps({"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "FP32",
                                   "parameters": {"binary_data_size": len(raw)}}]}).encode()
    return head + raw, len(head)


def in_process_ceiling(fn: object, images: np.ndarray, seconds: float = 5.0) -> dict[str, float]:
    """Images/s and CPU µs per image of ``fn`` called in this process on batches of 32 (what the batcher calls)."""
    call = fn  # a callable: N×28×28 float32 → N×10
    assert callable(call)
    batch = images[:32].astype(np.float32)
    for _ in range(5):
        call(batch)
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        call(batch)
        n += len(batch)
    elapsed = time.perf_counter() - t0
    return {"ips": n / elapsed, "cpu_us": (time.process_time() - c0) / n * 1e6}


def ceilings(tracking_uri: str, version: str, images: np.ndarray) -> dict[str, dict[str, float]]:
    """The gateway's own model call (compiled graph) and the plain eager Keras call, same version, same batch."""
    from mlcd.model_io import load_predictor
    from mlcd.serving.models import mlflow_loader

    compiled = mlflow_loader(MODEL, tracking_uri)(version)
    eager = load_predictor(f"models:/{MODEL}/{version}", tracking_uri=tracking_uri).predict_proba
    return {"compiled": in_process_ceiling(compiled, images), "eager": in_process_ceiling(eager, images)}


def v2_comparison(gw: subprocess.Popen[bytes], gw_port: int, tracking_uri: str, version: str, images: np.ndarray,
                  root: Path, env: dict[str, str]) -> None:
    from mlcd.settings import get_settings

    bin_dir = mlserver_venv(get_settings().home)  # the user's MLCD_HOME, kept between runs (not the bench's temp)
    ms, ms_port = start_mlserver(bin_dir, tracking_uri, version, root, env)
    path = f"/v2/models/{MODEL}/infer"
    json_bodies = write_bodies(root / "bodies-v2", [v2_body(img) for img in images])
    framed = [binary_v2_body(img) for img in images]
    bin_bodies = write_bodies(root / "bodies-v2-binary", [b for b, _ in framed], [h for _, h in framed])
    rows: list[tuple[int, dict[str, float], dict[str, float], dict[str, float]]] = []
    floor_port = free_port()
    # The HTTP floor: a bare ASGI app (bench/asgi_floor.py) under the same uvicorn, reading the same bodies.
    floor = start([sys.executable, "-m", "uvicorn", "--app-dir", str(Path(__file__).resolve().parent), "--host",
                   "127.0.0.1", "--port", str(floor_port), "--log-level", "warning", "--no-access-log",
                   "asgi_floor:app"], env, root / "floor.log")
    floors: dict[int, dict[str, float]] = {}
    try:
        wait_http(f"http://127.0.0.1:{floor_port}/", proc=floor, method="POST")
        try:
            wait_http(f"http://127.0.0.1:{ms_port}/v2/models/{MODEL}/ready", timeout=240, proc=ms)
        except RuntimeError:
            print((root / "mlserver.log").read_text(errors="replace")[-3000:], file=sys.stderr)
            raise
        for proc, port in ((gw, gw_port), (ms, ms_port)):
            measure(proc.pid, port, path, json_bodies, 4, 2)  # warm (graph tracing, first-call paths)
        print()
        print("Open Inference Protocol (V2 REST), same JSON request bytes to both: one FP32 [1, 28, 28] image; "
              "MLServer 1.7.1 + mlserver-mlflow, adaptive batching max_batch_size 64, max_batch_time 2 ms; "
              "the gateway also with the binary tensor extension (MLServer refuses it)")
        print(load_generator_note())
        print(HEADER)
        for c in CONCURRENCY:
            g = measure(gw.pid, gw_port, path, json_bodies, c, SECONDS_PER_POINT)
            b = measure(gw.pid, gw_port, path, bin_bodies, c, SECONDS_PER_POINT, "application/octet-stream")
            m = measure(ms.pid, ms_port, path, json_bodies, c, SECONDS_PER_POINT)
            f = floors[c] = measure(floor.pid, floor_port, path, json_bodies, c, SECONDS_PER_POINT)
            for name, r in (("mlcd gateway", g), ("mlcd gateway binary", b), ("mlserver", m), ("http floor", f)):
                print(row(c, name, r), flush=True)
            rows.append((c, g, b, m))
        print()
        print(f"{'conc':>4}  {'throughput ratio':>17}  {'p99 ratio (gw/mlserver)':>24}  {'server CPU ratio':>17}")
        for c, g, _, m in rows:
            print(f"{c:>4}  {g['rps'] / m['rps']:>16.2f}x  {g['p99_ms'] / m['p99_ms']:>23.2f}x  "
                  f"{g['server_ms'] / m['server_ms']:>16.2f}x")
    finally:
        stop(ms)
        stop(floor)
    ceil = ceilings(tracking_uri, version, images)
    print()
    for kind, what in (("compiled", "as the gateway calls it (one compiled graph)"),
                       ("eager", "as a plain eager Keras call")):
        print(f"ceiling, {kind}: the same model in-process on batches of 32, {what}: {ceil[kind]['ips']:.0f} "
              f"images/s, {ceil[kind]['cpu_us']:.0f} us CPU per image")
    cores = os.cpu_count() or 1
    for label, r in (("JSON", rows[-1][1]), ("binary", rows[-1][2])):
        c = rows[-1][0]
        share = r["rps"] / ceil["compiled"]["ips"]
        model_ms = ceil["compiled"]["cpu_us"] / 1000
        free_cores = cores * (1 - r["others_pct"] / 100)
        bound = free_cores * 1000 / (r["server_ms"] + r["client_ms"])
        print(f"gateway V2 {label} at concurrency {c}: {r['rps']:.0f} req/s = {share:.0%} of the compiled ceiling "
              f"({r['rps'] / ceil['eager']['ips']:.0%} of the eager one); CPU per request: server "
              f"{r['server_ms']:.3f} ms (model about {model_ms:.3f} ms of it at the ceiling's cost per image, "
              f"the rest HTTP, parsing, routing, metrics), client {r['client_ms']:.3f} ms; others used "
              f"{r['others_pct']:.0f} % of the {cores} cores, so server + client CPU allow at most {bound:.0f} req/s "
              f"on what was left")
    f = floors[rows[-1][0]]
    model_ms = ceil["compiled"]["cpu_us"] / 1000
    print(f"http floor (bench/asgi_floor.py, the same uvicorn, reading the same JSON bodies, no work) at concurrency "
          f"{rows[-1][0]}: {f['server_ms']:.3f} ms server CPU per request; at the compiled ceiling's {model_ms:.3f} ms "
          f"of model CPU per image, floor + model + client alone cap a single-image request at "
          f"{model_ms / (f['server_ms'] + model_ms + f['client_ms']):.0%} of the ceiling's throughput")


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
    if WRK is None:
        print("WARNING: wrk is not installed (Debian: apt-get install wrk): falling back to Python client threads, "
              "which share the cores with the servers; the figures then measure the client as much as the servers",
              file=sys.stderr, flush=True)

    t_all = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="mlcd-bench-serving-"))
    images = load_reference().x_test[:256]
    gw_bodies = write_bodies(root / "bodies-predict", [json.dumps({"images": [img.tolist()]}).encode()
                                                        for img in images])
    mlflow_bodies = write_bodies(root / "bodies-mlflow", [json.dumps({"inputs": [img.astype(np.float32).tolist()]})
                                                          .encode() for img in images])
    procs: list[subprocess.Popen[bytes]] = []
    server = LocalMlflowServer(root=root / "mlflow").start(timeout=300)  # a loaded shared machine is slow to start it
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
        print(f"model: reference CNN, version {v1} of {MODEL}; single-image requests; "
              f"{SECONDS_PER_POINT:.0f} s closed loop per point; {os.cpu_count()}-core machine, load average "
              f"{os.getloadavg()[0]:.1f} at the start")
        if not skip_mlflow:
            assert ml is not None
            for proc, port, path, bodies in ((gw, gw_port, "/predict", gw_bodies),
                                             (ml, ml_port, "/invocations", mlflow_bodies)):
                measure(proc.pid, port, path, bodies, 4, 2)  # warm both (graph tracing, JIT paths)
            print(load_generator_note())
            print(HEADER)
            rows = []
            for c in CONCURRENCY:
                g = measure(gw.pid, gw_port, "/predict", gw_bodies, c, SECONDS_PER_POINT)
                m = measure(ml.pid, ml_port, "/invocations", mlflow_bodies, c, SECONDS_PER_POINT)
                for name, r in (("mlcd gateway", g), ("mlflow serve", m)):
                    print(row(c, name, r), flush=True)
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
                base.append(measure(gw.pid, gw_port, "/predict", gw_bodies, 1, 3.0)["p50_ms"])
                admin_routes(gw_port, v1, v2, 50)
                routed.append(measure(gw.pid, gw_port, "/predict", gw_bodies, 1, 3.0)["p50_ms"])
            decision = routing_decision_us()
            print()
            print(f"routing overhead at p50, concurrency 1: stable only {statistics.median(base):.3f} ms, "
                  f"50 % canary {statistics.median(routed):.3f} ms -> "
                  f"{statistics.median(routed) - statistics.median(base):+.3f} ms")
            print(f"routing decision in-process (sticky hash + weight): {decision:.2f} us")
            admin_routes(gw_port, v1, None, 0)
        v2_comparison(gw, gw_port, server.url, v1, images, root, env)
        print(f"total bench time {time.perf_counter() - t_all:.0f} s")
    finally:
        for p in procs:
            stop(p)
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
