"""Training throughput: the trainer's ``tf.data`` pipeline against a plain ``model.fit`` on NumPy arrays.

Same model (the reference CNN, same seed), same images, same epochs and batch size, in the same process:
the peer is the seed's way (``model.fit(x_float32, y, shuffle=True)``), mlcd's is
:func:`mlcd.training.data.make_dataset` (uint8 cached, shuffled, batched, cast per batch, prefetched).
The two alternate (peer, mlcd, peer, mlcd …) so drift on a shared machine hits both; the best of the
repeats is kept. Then one epoch over 60,000 MNIST-shaped images with the trainer's pipeline.

    make bench            # or: .venv/bin/python bench/training.py [--images 20000 --epochs 2 --repeats 2]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from mlcd.data.reference import load_reference  # noqa: E402


def _fit_seconds(fit: Callable[[], object]) -> float:
    start = time.perf_counter()
    fit()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000, help="images in the pipeline comparison")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each; the best is kept")
    parser.add_argument("--full-epoch-images", type=int, default=60_000)
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    from mlcd.training.data import make_dataset
    from mlcd.training.model import ReferenceCNN

    ref = load_reference()
    x_all = np.concatenate([ref.x_train, ref.x_test])
    y_all = np.concatenate([ref.y_train, ref.y_test])
    x, y = x_all[: args.images], y_all[: args.images]
    print(f"data: {len(x)} images from {ref.source}; {args.epochs} epochs, batch {args.batch_size}; "
          f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, GPUs: {len(tf.config.list_physical_devices('GPU'))}")

    def fresh_model() -> keras.Model:
        keras.utils.set_random_seed(0)
        return ReferenceCNN().build()

    # Warm-up: TensorFlow's one-off start-up (thread pools, kernels) must not count against whichever runs first.
    fresh_model().fit(x[:512].astype(np.float32), y[:512], batch_size=args.batch_size, epochs=1, verbose=0)

    def peer() -> None:
        model = fresh_model()
        xf = x.astype(np.float32)  # the seed's way: float arrays in memory, Keras slices them
        model.fit(xf, y, batch_size=args.batch_size, epochs=args.epochs, shuffle=True, verbose=0)

    def mlcd() -> None:
        model = fresh_model()
        ds = make_dataset(x, y, args.batch_size, shuffle=True, seed=0)
        model.fit(ds, epochs=args.epochs, verbose=0)

    times: dict[str, list[float]] = {"numpy": [], "tf.data": []}
    for _ in range(args.repeats):
        times["numpy"].append(_fit_seconds(peer))
        times["tf.data"].append(_fit_seconds(mlcd))
    samples = len(x) * args.epochs
    print(f"{'input':<28}{'best s':>9}{'samples/s':>12}   all runs (s)")
    rates = {}
    for name, label in (("numpy", "model.fit(NumPy arrays)"), ("tf.data", "mlcd tf.data pipeline")):
        best = min(times[name])
        rates[name] = samples / best
        runs = ", ".join(f"{t:.1f}" for t in times[name])
        print(f"{label:<28}{best:>9.2f}{rates[name]:>12,.0f}   {runs}")
    ratio = rates["tf.data"] / rates["numpy"]
    print(f"ratio tf.data/NumPy samples/s: {ratio:.2f}x  -> {'not slower' if ratio >= 0.97 else 'SLOWER'}")

    # One epoch over 60,000 MNIST-shaped images (tiled when the reference set is smaller).
    n = args.full_epoch_images
    reps = -(-n // len(x_all))
    x60, y60 = np.concatenate([x_all] * reps)[:n], np.concatenate([y_all] * reps)[:n]
    model = fresh_model()
    ds = make_dataset(x60, y60, args.batch_size, shuffle=True, seed=0)
    seconds = _fit_seconds(lambda: model.fit(ds, epochs=1, verbose=0))
    print(f"one epoch over {n:,} images (tf.data, batch {args.batch_size}): {seconds:.1f} s "
          f"({n / seconds:,.0f} samples/s, first-epoch tracing included)")


if __name__ == "__main__":
    main()
