"""Read a training snapshot and turn it into ``tf.data`` pipelines.

A snapshot is a folder (``train.npz``, ``val.npz``, ``test.npz``, ``manifest.json``, see
:mod:`mlcd.data.snapshot`) on a local path, a ``file://`` URL, or any fsspec URL (``s3://…``, ``gs://…``)
that a pod can reach, read with ``MLCD_STORAGE_OPTIONS`` and the store's own credentials (``AWS_*``…). A remote
snapshot exists once its manifest is published; each member is read up to the size the manifest records and checked
against its SHA-256 (never unpickled). Every problem is raised as :class:`SnapshotError` with one readable line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mlcd.data.batch import BatchError
from mlcd.data.snapshot import load_split, read_snapshot
from mlcd.model_io import IMAGE_SHAPE, NUM_CLASSES
from mlcd.storage import is_local, local_path

if TYPE_CHECKING:
    import tensorflow as tf


class SnapshotError(ValueError):
    """A snapshot the trainer cannot use; ``str(err)`` is the one-line reason."""


@dataclass(frozen=True)
class TrainingData:
    """The train and validation splits of one snapshot, as uint8 images and int64 labels."""

    snapshot_id: str
    snapshot_path: str  # as given (a path or URL), recorded in MLflow and the result
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def _check(split: str, x: np.ndarray, y: np.ndarray) -> None:
    if len(x) == 0:
        raise SnapshotError(f"the {split} split is empty: the snapshot is too small to train on")
    if tuple(x.shape[1:]) != IMAGE_SHAPE:
        raise SnapshotError(f"{split} images have shape {tuple(x.shape[1:])}; expected {IMAGE_SHAPE}")
    if y.min() < 0 or y.max() >= NUM_CLASSES:
        raise SnapshotError(f"{split} labels outside 0..{NUM_CLASSES - 1} (min {y.min()}, max {y.max()})")


def load_training_data(snapshot: str | Path, max_train_samples: int | None = None, seed: int = 0) -> TrainingData:
    """Read and check the train/val splits of a snapshot.

    Args:
        snapshot: folder path or URL of the snapshot.
        max_train_samples: keep at most this many training images, a seeded random subset (quick runs).
        seed: seeds the subset.

    Raises:
        SnapshotError: missing, unreadable or unusable snapshot.
    """
    given = str(snapshot)
    if is_local(given) and not local_path(given).is_dir():
        raise SnapshotError(f"snapshot folder {given} does not exist (or is not a folder)")
    try:
        snap = read_snapshot(given)
    except (ValueError, KeyError, OSError) as err:
        raise SnapshotError(str(err) if "snapshot" in str(err) else f"snapshot {given}: {err}") from None
    splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in ("train", "val"):
        try:
            splits[split] = load_split(snap, split)  # type: ignore[arg-type]
        except (BatchError, OSError) as err:
            raise SnapshotError(f"snapshot {given}: {split}.npz: {err}") from None
    (x_train, y_train), (x_val, y_val) = splits["train"], splits["val"]
    _check("train", x_train, y_train)
    _check("val", x_val, y_val)
    if max_train_samples is not None and 0 < max_train_samples < len(x_train):
        # Sorted indices keep the snapshot's own order; the seed makes the subset repeatable.
        keep = np.sort(np.random.default_rng(seed).permutation(len(x_train))[:max_train_samples])
        x_train, y_train = x_train[keep], y_train[keep]
    return TrainingData(snap.snapshot_id, given, x_train, y_train, x_val, y_val)


def make_dataset(
    x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool, seed: int = 0, accelerated: bool = False
) -> tf.data.Dataset:
    """A batched pipeline of ``(float32 N×28×28 pixels 0–255, int64 labels)`` over uint8 images held once.

    The images stay uint8 in memory (a quarter of float32's bytes; ``model.fit`` on NumPy arrays needs a
    float32 copy of the whole set) and are cast in the graph, per batch: one vectorised gather + cast of a
    batch of shuffled indices. Scaling to 0–1 lives in the model (its ``Rescaling`` layer), so serving and
    training cannot disagree. Shuffling reshuffles every epoch, seeded, so a run is repeatable. Nothing is
    cached: a cache after the cast would hold float32 copies again.

    Profiled on 2 CPU cores (bench/training.py, bench/RESULTS.md), a batch costs about 1 ms against 60 ms or
    more for the CNN's train step, so on a CPU the pipeline's job is to stay out of the step's way: a
    sequential map, two batches prefetched, no autotuning thread and no static graph rewrites (tf.data would
    serialise the in-graph image tensor at every epoch's iterator to rewrite it, as Keras' own array adapter
    also avoids). ``accelerated`` (the trainer's GPU check) turns parallel mapping and autotuned prefetching
    back on, where a step takes a few milliseconds; a distribution strategy then prefetches to each device.
    """
    import tensorflow as tf

    images = tf.constant(np.ascontiguousarray(x, dtype=np.uint8))
    labels = tf.constant(np.asarray(y, dtype=np.int64))
    ds = tf.data.Dataset.range(len(x))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    ds = ds.map(
        lambda idx: (tf.cast(tf.gather(images, idx), tf.float32), tf.gather(labels, idx)),
        num_parallel_calls=tf.data.AUTOTUNE if accelerated else None,
    )
    options = tf.data.Options()
    options.deterministic = True  # batches in the seeded order whatever the parallelism: repeatable runs
    options.experimental_optimization.apply_default_optimizations = False
    options.autotune.enabled = accelerated
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE if accelerated else 2)
