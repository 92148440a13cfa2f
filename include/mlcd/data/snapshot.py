"""Training snapshots: every accepted batch, versioned by content hash, split deterministically.

Each image's split is a function of the image's own bytes (a keyed hash bucket), never of its position or of
what else has landed. So an image that was in the test set stays there in every later snapshot: the test set
only grows, and a challenger and the champion are compared on examples neither trained on.

Layout of a snapshot folder ``<snapshots>/<snapshot_id>/``::

    train.npz  val.npz  test.npz   # x: uint8 N×28×28, y: int64 N
    manifest.json                  # snapshot_id, batches, counts, split fractions

Publishing is crash-safe: the folder is written under a staging name (``.<id>.<host>.<pid>.staging``), every file
and the folder itself are fsynced, and only then is it renamed into place (and the parent fsynced). Any failure
(a full disk, an interrupt) removes the staging folder; a writer killed outright leaves one behind, which the next
build removes once its process is gone. A re-run builds the same id again and converges.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from mlcd.data.batch import UNLIMITED, load_batch
from mlcd.files import clean_stale_staging, fsync_dir, staging_tag

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
SPLIT_VERSION = "blake2b-bucket-v1"  # change only with a migration: it decides which images are test images
BUCKETS = 1000
TRAIN_BUCKETS = 800  # [0, 800) train
VAL_BUCKETS = 100  # [800, 900) validation, [900, 1000) test
STAGING_MARKER = ".staging"


@dataclass(frozen=True)
class Snapshot:
    snapshot_id: str
    path: Path
    counts: dict[str, int]
    batches: tuple[str, ...]

    def split_path(self, split: Split) -> Path:
        return self.path / f"{split}.npz"


def split_of(images: np.ndarray) -> np.ndarray:
    """The split code of each image: 0 train, 1 validation, 2 test. Depends on the image bytes alone."""
    flat = np.ascontiguousarray(images).reshape(len(images), -1)
    buckets = np.fromiter(
        (int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "big") % BUCKETS for row in flat),
        dtype=np.int64,
        count=len(flat),
    )
    codes = np.full(len(flat), 2, dtype=np.int8)
    codes[buckets < TRAIN_BUCKETS + VAL_BUCKETS] = 1
    codes[buckets < TRAIN_BUCKETS] = 0
    return codes


def snapshot_id_for(batch_hashes: Iterable[str]) -> str:
    """The snapshot's version: a hash of its sorted batch hashes and the split rule."""
    digest = hashlib.sha256(SPLIT_VERSION.encode())
    for h in sorted(set(batch_hashes)):
        digest.update(h.encode())
    return digest.hexdigest()[:16]


def build_snapshot(batch_files: dict[str, str | Path], snapshots_dir: str | Path) -> Snapshot:
    """Combine accepted batches into a snapshot, or return the existing one with the same id.

    Args:
        batch_files: batch content hash → path of its accepted copy.
        snapshots_dir: the folder that holds snapshot folders.

    Returns:
        The snapshot; building is idempotent and atomic (a half-written snapshot is never visible).
    """
    if not batch_files:
        raise ValueError("no accepted batches: nothing to snapshot")
    snapshot_id = snapshot_id_for(batch_files)
    root = Path(snapshots_dir)
    final = root / snapshot_id
    if (final / "manifest.json").exists():
        return read_snapshot(final)
    xs, ys = [], []
    for batch_hash in sorted(batch_files):
        # mlcd's own accepted copies, checked within the limits when they were accepted: a limit lowered since
        # must not make older training data unreadable.
        batch = load_batch(batch_files[batch_hash], UNLIMITED)
        xs.append(batch.x.astype(np.uint8, copy=False))
        ys.append(batch.y.astype(np.int64))
    return write_snapshot(np.concatenate(xs), np.concatenate(ys), root, snapshot_id, tuple(sorted(batch_files)))


def write_snapshot(
    x: np.ndarray, y: np.ndarray, snapshots_dir: str | Path, snapshot_id: str, batches: Sequence[str] = ()
) -> Snapshot:
    """Split ``x``/``y`` by image hash and write a snapshot folder atomically."""
    root = Path(snapshots_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / snapshot_id
    clean_stale_staging(root, STAGING_MARKER)
    if (final / "manifest.json").exists():
        return read_snapshot(final)
    staging = root / f".{snapshot_id}.{staging_tag()}{STAGING_MARKER}"
    try:
        staging.mkdir()
        codes = split_of(x)
        counts: dict[str, int] = {}
        for code, split in enumerate(SPLITS):
            mask = codes == code
            counts[split] = int(mask.sum())
            with open(staging / f"{split}.npz", "wb") as fh:
                np.savez(fh, x=x[mask], y=y[mask])
                fh.flush()
                os.fsync(fh.fileno())
        manifest = {
            "snapshot_id": snapshot_id,
            "batches": list(batches),
            "counts": counts,
            "split": {"rule": SPLIT_VERSION, "train": TRAIN_BUCKETS / BUCKETS, "val": VAL_BUCKETS / BUCKETS},
        }
        # The manifest is written last: a folder with one is complete.
        with open(staging / "manifest.json", "w") as fh:
            fh.write(json.dumps(manifest, indent=2))
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(staging)
        try:
            os.replace(staging, final)
        except OSError:
            # Another run published the same id first: same id means same content.
            if not (final / "manifest.json").exists():
                raise
            shutil.rmtree(staging, ignore_errors=True)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return read_snapshot(final)


def write_arrays_snapshot(x: np.ndarray, y: np.ndarray, snapshots_dir: str | Path) -> Snapshot:
    """A snapshot of in-memory arrays (tests, benchmarks), versioned by the arrays' own hash."""
    digest = hashlib.sha256(np.ascontiguousarray(x).tobytes() + np.ascontiguousarray(y).tobytes()).hexdigest()
    return write_snapshot(x, y, snapshots_dir, snapshot_id_for([digest]), (digest,))


def read_snapshot(path: str | Path) -> Snapshot:
    path = Path(path)
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable snapshot (manifest.json: {err})") from None
    return Snapshot(
        snapshot_id=manifest["snapshot_id"],
        path=path,
        counts=dict(manifest["counts"]),
        batches=tuple(manifest.get("batches", ())),
    )


def load_split(snapshot_dir: str | Path, split: Split) -> tuple[np.ndarray, np.ndarray]:
    """``(x uint8 N×28×28, y int64 N)`` of one split of a snapshot."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    batch = load_batch(Path(snapshot_dir) / f"{split}.npz", UNLIMITED)
    return batch.x.astype(np.uint8, copy=False), batch.y.astype(np.int64)
