"""Snapshot publish and the trainer's load by URI: file:// (atomic rename) vs s3:// (objects, manifest last).

The S3 side is moto's standalone server on 127.0.0.1 driven through s3fs, as real S3 would be (no network latency:
the ratio is the protocol's and the copies' cost, not a cloud's). Prints median seconds and the s3/file ratio.

    PYTHONPATH=include MLCD_DATA=/work/shared/data/mnist.npz .venv/bin/python bench/storage.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path


def _moto() -> tuple[subprocess.Popen[bytes], str]:
    from mlcd.mlflow_server import free_port

    port = free_port()
    server = str(Path(sys.executable).with_name("moto_server"))
    proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).read()
            return proc, endpoint
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    proc, endpoint = _moto()
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                      MLCD_STORAGE_OPTIONS=json.dumps({"endpoint_url": endpoint}))
    try:
        import s3fs

        s3fs.S3FileSystem(endpoint_url=endpoint).mkdir("bench")
        from mlcd.data.reference import load_reference
        from mlcd.data.snapshot import write_arrays_snapshot
        from mlcd.training.data import load_training_data

        ref = load_reference()
        x, y = ref.x_train, ref.y_train
        print(f"data: {len(x)} images from {ref.source}; median of {args.repeat} runs (a fresh snapshot each)")
        results: dict[str, tuple[float, float]] = {}
        for name in ("file", "s3"):
            publish, load = [], []
            for _ in range(args.repeat):
                root = f"file://{tempfile.mkdtemp()}" if name == "file" else f"s3://bench/{uuid.uuid4().hex[:8]}"
                t0 = time.perf_counter()
                snap = write_arrays_snapshot(x, y, f"{root}/snapshots")
                t1 = time.perf_counter()
                data = load_training_data(snap.uri)
                t2 = time.perf_counter()
                assert len(data.x_train) == snap.counts["train"]
                publish.append(t1 - t0)
                load.append(t2 - t1)
            results[name] = (statistics.median(publish), statistics.median(load))
        print(f"{'storage':8s} {'publish s':>10s} {'load s':>10s}")
        for name, (pub, load) in results.items():
            print(f"{name:8s} {pub:10.2f} {load:10.2f}")
        print(f"ratio s3/file: publish {results['s3'][0] / results['file'][0]:.2f}x, "
              f"trainer load {results['s3'][1] / max(results['file'][1], 1e-9):.2f}x")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


if __name__ == "__main__":
    main()
