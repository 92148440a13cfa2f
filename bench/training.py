"""Training: the trainer's fit path against ``model.fit`` on NumPy arrays, and ``mlcd train`` against plain Keras.

Part 1, in one process: the same model (the reference CNN, same seed), the same images, epochs and batch size,
validated every epoch on the same split. The peer is ``model.fit(x_float32, y, validation_data=…, shuffle=True)``
(a float32 copy of the images, Keras slices it); mlcd's side is :func:`mlcd.training.trainer.fit`, exactly what
``mlcd train`` runs (uint8 ``tf.data`` pipelines from :func:`mlcd.training.data.make_dataset`, cast per batch in
the graph). Each pair of runs alternates its order (peer, mlcd, mlcd, peer …) so drift on a
shared machine hits both sides; reported: median and min–max of every side, and the median of the per-pair
ratios (peer seconds / mlcd seconds, > 1 means mlcd is faster). Also timed: one pass over the batches alone.

Part 2, what a user waits for: the whole ``python -m mlcd.cli train`` command (snapshot read, training,
evaluation, MLflow logging of params, metrics, plot and model to a real ``mlflow server`` on 127.0.0.1) against a
plain Keras script (read the same snapshot arrays, train the same model with the same settings, save it to a
``.keras`` file), each a fresh Python process, alternating; the ratio of wall times is mlcd's overhead.

    make bench   # or: .venv/bin/python bench/training.py [--images 6000 --repeats 5 --e2e-images 8000 ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from mlcd.data.reference import load_reference  # noqa: E402


def _seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def alternate(sides: dict[str, Callable[[], object]], repeats: int, label: str) -> dict[str, list[float]]:
    """``repeats`` pairs of runs, the order flipped every pair (A B, B A, …); prints each pair as it ends."""
    names = list(sides)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            times[name].append(_seconds(sides[name]))
        shown = "  ".join(f"{name} {times[name][-1]:.2f}s" for name in names)
        print(f"  {label} pair {i + 1}/{repeats}: {shown}", flush=True)
    return times


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def report(times: dict[str, list[float]], labels: dict[str, str], samples: int | None) -> float:
    """Print median, min–max (and samples/s); return the median of per-pair ratios first side / second side."""
    peer, ours = list(times)
    head = f"{'':<34}{'median s':>9}{'min-max s':>14}" + (f"{'samples/s':>11}" if samples else "")
    print(head + "   runs (s)")
    for name in (peer, ours):
        med = statistics.median(times[name])
        rate = f"{samples / med:>11,.0f}" if samples else ""
        runs = ", ".join(f"{t:.2f}" for t in times[name])
        print(f"{labels[name]:<34}{med:>9.2f}{spread(times[name]):>14}{rate}   {runs}")
    pairs = [p / o for p, o in zip(times[peer], times[ours], strict=True)]
    print(f"per-pair ratio {labels[peer].split('(')[0].strip()} s / {labels[ours].split('(')[0].strip()} s: "
          f"median {statistics.median(pairs):.2f}x, range {spread(pairs)}x; "
          f"ratio of medians {statistics.median(times[peer]) / statistics.median(times[ours]):.2f}x")
    return statistics.median(pairs)


def fit_comparison(args: argparse.Namespace) -> None:
    import keras
    import tensorflow as tf

    from mlcd.training.data import TrainingData, make_dataset
    from mlcd.training.model import ReferenceCNN
    from mlcd.training.trainer import fit

    ref = load_reference()
    x, y = ref.x_train[: args.images], ref.y_train[: args.images]
    xv, yv = ref.x_test[: args.val_images], ref.y_test[: args.val_images]
    data = TrainingData("bench", "bench", x, y, xv, yv)
    print(f"part 1: {len(x)} train + {len(xv)} val images from {ref.source}; {args.epochs} epoch(s), batch "
          f"{args.batch_size}, {args.repeats} alternating pairs; TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, "
          f"GPUs: {len(tf.config.list_physical_devices('GPU'))}",
          flush=True)

    def fresh_model() -> keras.Model:
        keras.utils.set_random_seed(0)
        return ReferenceCNN().build()

    # Warm-up: TensorFlow's one-off start-up (thread pools, kernels) must not count against whichever runs first.
    fresh_model().fit(x[:512].astype(np.float32), y[:512], batch_size=args.batch_size, epochs=1, verbose=0)

    def peer() -> None:
        # The plain way: float32 arrays in memory (4x the bytes of uint8), Keras slices and shuffles them.
        xf, xvf = x.astype(np.float32), xv.astype(np.float32)
        fresh_model().fit(xf, y, validation_data=(xvf, yv), batch_size=args.batch_size, epochs=args.epochs,
                          shuffle=True, verbose=0)

    def mlcd() -> None:
        fit(fresh_model(), data, epochs=args.epochs, batch_size=args.batch_size, seed=0)

    times = alternate({"numpy": peer, "mlcd": mlcd}, args.repeats, "fit")
    ratio = report(times, {"numpy": "model.fit(NumPy float32 arrays)", "mlcd": "mlcd trainer fit (uint8 tf.data)"},
                   len(x) * args.epochs)
    print(f"-> mlcd is {'at least as fast' if ratio >= 1.0 else 'SLOWER'} (median per-pair ratio {ratio:.2f}x)")

    # The input alone: one pass over the batches, no model, so the pipeline's own cost is visible.
    from keras.src.trainers.data_adapters.array_data_adapter import ArrayDataAdapter

    def keras_batches() -> None:
        adapter = ArrayDataAdapter(x.astype(np.float32), y, batch_size=args.batch_size, shuffle=True)
        for _ in adapter.get_tf_dataset():
            pass

    def mlcd_batches() -> None:
        for _ in make_dataset(x, y, args.batch_size, shuffle=True, seed=0):
            pass

    keras_batches(), mlcd_batches()  # first-use tracing out of the figure
    inputs = alternate({"keras": keras_batches, "mlcd": mlcd_batches}, args.repeats, "input only")
    batches = -(-len(x) // args.batch_size)
    print(f"input only, one pass of {batches} batches: Keras array adapter median "
          f"{statistics.median(inputs['keras']) * 1000 / batches:.2f} ms/batch, mlcd make_dataset "
          f"{statistics.median(inputs['mlcd']) * 1000 / batches:.2f} ms/batch "
          f"(a train step: {statistics.median(times['mlcd']) * 1000 / (batches * args.epochs):.0f} ms/batch incl. "
          f"validation)")


PLAIN_KERAS = textwrap.dedent(
    """
    # A plain Keras script: read the snapshot's arrays, train the same model with the same settings, save it.
    import os, sys
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import keras
    from mlcd.training.model import ReferenceCNN  # the same architecture and compile as mlcd's default model

    snapshot, epochs, batch, limit, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    with np.load(f"{snapshot}/train.npz") as f:
        x, y = f["x"][:limit], f["y"][:limit]
    with np.load(f"{snapshot}/val.npz") as f:
        xv, yv = f["x"], f["y"]
    keras.utils.set_random_seed(0)
    model = ReferenceCNN().build()
    model.fit(x.astype("float32"), y, validation_data=(xv.astype("float32"), yv), epochs=epochs, batch_size=batch,
              shuffle=True, verbose=0)
    model.save(out)
    """
)


def end_to_end(args: argparse.Namespace) -> None:
    from mlcd.data.snapshot import write_arrays_snapshot
    from mlcd.mlflow_server import LocalMlflowServer

    ref = load_reference()
    x_all = np.concatenate([ref.x_train, ref.x_test])[: args.e2e_images]
    y_all = np.concatenate([ref.y_train, ref.y_test])[: args.e2e_images]
    with tempfile.TemporaryDirectory(prefix="mlcd-bench-train-") as tmp:
        root = Path(tmp)
        snap = write_arrays_snapshot(x_all, y_all, root / "snapshots")
        script = root / "plain_keras.py"
        script.write_text(PLAIN_KERAS)
        train_n = snap.counts["train"]
        started = time.perf_counter()
        server = LocalMlflowServer(root / "mlflow").start()
        print(f"\npart 2: snapshot of {args.e2e_images} images ({train_n} train / {snap.counts['val']} val), "
              f"{args.e2e_epochs} epoch(s), batch {args.batch_size}, {args.e2e_repeats} alternating pairs; "
              f"mlflow server {server.url} (healthy after {time.perf_counter() - started:.1f} s, not counted)",
              flush=True)
        env = dict(os.environ, MLFLOW_TRACKING_URI=server.url)
        try:
            mlcd_cmd = [sys.executable, "-m", "mlcd.cli", "train", "--snapshot", str(snap.path),
                        "--epochs", str(args.e2e_epochs), "--batch-size", str(args.batch_size),
                        "--tracking-uri", server.url, "--experiment", "bench-training"]
            run_no = iter(range(10**6))

            def keras_script() -> None:
                out = root / f"model-{next(run_no)}.keras"
                cmd = [sys.executable, str(script), str(snap.path), str(args.e2e_epochs), str(args.batch_size),
                       str(train_n), str(out)]
                subprocess.run(cmd, check=True, env=env, capture_output=True)
                assert out.stat().st_size > 0

            def mlcd_train() -> None:
                done = subprocess.run(mlcd_cmd, check=False, env=env, capture_output=True, text=True)
                if done.returncode != 0 or "MLCD_TRAIN_RESULT" not in done.stdout:
                    raise SystemExit(f"mlcd train failed ({done.returncode}): {done.stderr[-2000:]}")

            times = alternate({"keras": keras_script, "mlcd": mlcd_train}, args.e2e_repeats, "end to end")
        finally:
            server.stop()
    ratio = report(times, {"keras": "plain Keras script + model.save", "mlcd": "mlcd train (MLflow logging)"}, None)
    overhead = statistics.median(times["mlcd"]) / statistics.median(times["keras"]) - 1
    pair_overhead = 1 / ratio - 1
    print(f"-> mlcd train overhead: {overhead:+.0%} on the medians, {pair_overhead:+.0%} median per pair "
          f"(goal <= +15 %: {'MET' if max(overhead, pair_overhead) <= 0.15 else 'NOT MET'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6_000, help="training images in part 1")
    parser.add_argument("--val-images", type=int, default=1_000, help="validation images in part 1")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="alternating pairs of runs in part 1")
    parser.add_argument("--e2e-images", type=int, default=8_000, help="images in part 2's snapshot (80 %% train)")
    parser.add_argument("--e2e-epochs", type=int, default=2, help="at most the trainer's patience: no early stop")
    parser.add_argument("--e2e-repeats", type=int, default=3, help="alternating pairs of runs in part 2")
    parser.add_argument("--skip-e2e", action="store_true", help="part 1 only")
    args = parser.parse_args()
    started = time.perf_counter()
    fit_comparison(args)
    if not args.skip_e2e:
        end_to_end(args)
    print(f"\nwhole benchmark: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
