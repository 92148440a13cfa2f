"""Training snapshots: every accepted batch, versioned by content hash, split deterministically.

Each image's split is a function of the image's own bytes (a keyed hash bucket), never of its position or of
what else has landed. So an image that was in the test set stays there in every later snapshot: the test set
only grows, and a challenger and the champion are compared on examples neither trained on.

Layout of a snapshot folder ``<snapshots>/<snapshot_id>/`` (a local folder or a prefix in an object store)::

    train.npz  val.npz  test.npz   # x: uint8 N×28×28, y: int64 N (byte-for-byte deterministic)
    manifest.json                  # snapshot_id, batches, counts, split fractions, members (size, sha256)

A snapshot exists once its manifest does; the manifest names every member with its size and SHA-256, and readers
check both. On a local disk publishing is crash-safe: the folder is written under a staging name
(``.<id>.<host>.<pid>.staging``), every file and the folder itself are fsynced, and only then is it renamed into
place (and the parent fsynced). Any failure (a full disk, an interrupt) removes the staging folder; a writer killed
outright leaves one behind, which the next build removes once its process is gone. In an object store (no rename)
the members are put first and the manifest last: members without a manifest are invisible, and a re-run writes
the same bytes again and publishes the manifest. A re-run builds the same id again and converges.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mlcd.data.batch import UNLIMITED, BatchError, load_batch
from mlcd.files import clean_stale_staging, fsync_dir, staging_tag
from mlcd.storage import MANIFEST, Storage, StorageError, is_local, local_path, read_location, sha256_hex, to_url

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
SPLIT_VERSION = "blake2b-bucket-v1"  # change only with a migration: it decides which images are test images
BUCKETS = 1000
TRAIN_BUCKETS = 800  # [0, 800) train
VAL_BUCKETS = 100  # [800, 900) validation, [900, 1000) test
STAGING_MARKER = ".staging"


# A batch or split file this big is beyond anything a snapshot member can be (reads stay bounded).
MAX_MEMBER_BYTES = 1 << 36


@dataclass(frozen=True)
class Snapshot:
    snapshot_id: str
    uri: str  # full URL (file:///… locally): what tasks and pods exchange
    counts: dict[str, int]
    batches: tuple[str, ...]
    members: dict[str, dict[str, Any]]  # file name -> {"size", "sha256"}; empty for snapshots of older mlcd

    @property
    def is_local(self) -> bool:
        return is_local(self.uri)

    @property
    def path(self) -> Path:
        """The local folder (local snapshots only)."""
        if not self.is_local:
            raise ValueError(f"snapshot {self.uri} is not on a local disk; read it by its URI")
        return local_path(self.uri)

    @property
    def location(self) -> str:
        """The plain path locally (as before), else the URL."""
        return str(self.path) if self.is_local else self.uri

    def split_path(self, split: Split) -> Path:
        return self.path / f"{split}.npz"


def npz_bytes(x: np.ndarray, y: np.ndarray) -> bytes:
    """``x``/``y`` as an uncompressed ``.npz`` whose bytes depend on the arrays alone.

    ``np.savez`` stamps each member with the current time; a snapshot member must be the same bytes whoever
    writes it, so that concurrent or repeated writers of one snapshot id put identical objects.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, arr in (("x", x), ("y", y)):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o600 << 16
            with archive.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


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
        batch_files: batch content hash → path or URL of its accepted copy.
        snapshots_dir: the folder (path or storage URL) that holds snapshot folders.

    Returns:
        The snapshot; building is idempotent and atomic (a half-written snapshot is never visible).
    """
    if not batch_files:
        raise ValueError("no accepted batches: nothing to snapshot")
    snapshot_id = snapshot_id_for(batch_files)
    existing = _published(Storage(snapshots_dir), snapshot_id)
    if existing is not None:
        return existing
    xs, ys = [], []
    for batch_hash in sorted(batch_files):
        # mlcd's own accepted copies, checked within the limits when they were accepted: a limit lowered since
        # must not make older training data unreadable.
        batch = load_batch(_accepted_source(batch_files[batch_hash], batch_hash), UNLIMITED)
        xs.append(batch.x.astype(np.uint8, copy=False))
        ys.append(batch.y.astype(np.int64))
    return write_snapshot(
        np.concatenate(xs), np.concatenate(ys), snapshots_dir, snapshot_id, tuple(sorted(batch_files))
    )


def _accepted_source(location: str | Path, batch_hash: str) -> str | Path | bytes:
    """A local accepted copy by path; a remote one read whole and checked against its content hash."""
    if is_local(str(location)):
        return local_path(location)
    data = read_location(location, max_bytes=MAX_MEMBER_BYTES)
    if len(batch_hash) == 64 and sha256_hex(data) != batch_hash:
        raise BatchError(f"accepted copy {location} does not hash to its name {batch_hash[:12]}: corrupt store")
    return data


def _published(storage: Storage, snapshot_id: str) -> Snapshot | None:
    """The snapshot if its manifest is published, else None (absent, or members without a manifest yet)."""
    try:
        if storage.read_json(snapshot_id, MANIFEST) is None:
            return None
    except (OSError, ValueError):
        return None  # an unreadable manifest is rewritten by the build below
    return read_snapshot(storage.uri(snapshot_id))


def write_snapshot(
    x: np.ndarray, y: np.ndarray, snapshots_dir: str | Path, snapshot_id: str, batches: Sequence[str] = ()
) -> Snapshot:
    """Split ``x``/``y`` by image hash and publish a snapshot atomically (folder rename, or manifest last)."""
    storage = Storage(snapshots_dir)
    existing = _published(storage, snapshot_id)
    if existing is not None:
        return existing
    codes = split_of(x)
    counts: dict[str, int] = {}
    members: dict[str, bytes] = {}
    for code, split in enumerate(SPLITS):
        mask = codes == code
        counts[split] = int(mask.sum())
        members[f"{split}.npz"] = npz_bytes(x[mask], y[mask])
    manifest = {
        "snapshot_id": snapshot_id,
        "batches": list(batches),
        "counts": counts,
        "split": {"rule": SPLIT_VERSION, "train": TRAIN_BUCKETS / BUCKETS, "val": VAL_BUCKETS / BUCKETS},
        "members": {name: {"size": len(data), "sha256": sha256_hex(data)} for name, data in members.items()},
    }
    if storage.local is not None:
        _publish_local(storage.local, snapshot_id, members, manifest)
    else:
        # No rename in an object store: every member first, the manifest last. A writer that dies in between
        # leaves members nobody reads (no manifest); the re-run puts the same bytes again and publishes.
        for name, data in members.items():
            storage.write_bytes(f"{snapshot_id}/{name}", data)
        storage.write_json(f"{snapshot_id}/{MANIFEST}", manifest)
    return read_snapshot(storage.uri(snapshot_id))


def _publish_local(root: Path, snapshot_id: str, members: dict[str, bytes], manifest: dict[str, Any]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    final = root / snapshot_id
    clean_stale_staging(root, STAGING_MARKER)
    if (final / MANIFEST).exists():
        return
    staging = root / f".{snapshot_id}.{staging_tag()}{STAGING_MARKER}"
    try:
        staging.mkdir()
        for name, data in members.items():
            with open(staging / name, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        # The manifest is written last: a folder with one is complete.
        with open(staging / MANIFEST, "w") as fh:
            fh.write(json.dumps(manifest, indent=2))
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(staging)
        if final.is_dir() and not (final / MANIFEST).exists():
            # Not a snapshot (no manifest: copied in by hand, or left by another tool); ours replaces it.
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.replace(staging, final)
        except OSError:
            # Another run published the same id first: same id means same content.
            if not (final / MANIFEST).exists():
                raise
            shutil.rmtree(staging, ignore_errors=True)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_arrays_snapshot(x: np.ndarray, y: np.ndarray, snapshots_dir: str | Path) -> Snapshot:
    """A snapshot of in-memory arrays (tests, benchmarks), versioned by the arrays' own hash."""
    digest = hashlib.sha256(np.ascontiguousarray(x).tobytes() + np.ascontiguousarray(y).tobytes()).hexdigest()
    return write_snapshot(x, y, snapshots_dir, snapshot_id_for([digest]), (digest,))


def read_snapshot(location: str | Path) -> Snapshot:
    """The published snapshot at a path or URL; ValueError when it has no readable manifest (it does not exist)."""
    url = to_url(location)
    parent, _, name = url.rpartition("/")
    try:
        manifest = Storage(parent).read_json(name, MANIFEST)
    except (OSError, ValueError) as err:
        raise ValueError(f"{location} is not a readable snapshot ({MANIFEST}: {err})") from None
    if manifest is None:
        raise ValueError(f"{location} is not a readable snapshot ({MANIFEST} not published)")
    try:
        return Snapshot(
            snapshot_id=str(manifest["snapshot_id"]),
            uri=url,
            counts={str(k): int(v) for k, v in dict(manifest["counts"]).items()},
            batches=tuple(manifest.get("batches", ())),
            members={str(k): dict(v) for k, v in dict(manifest.get("members") or {}).items()},
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{location} is not a readable snapshot ({MANIFEST}: bad field {err})") from None


def load_split(snapshot: str | Path | Snapshot, split: Split) -> tuple[np.ndarray, np.ndarray]:
    """``(x uint8 N×28×28, y int64 N)`` of one split of a snapshot given by path, URL or :class:`Snapshot`.

    A remote member is read only up to the size its manifest records and checked against its SHA-256, so a
    member that was half written or replaced is refused; a local one is read in place (as always).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    name = f"{split}.npz"
    where = snapshot.uri if isinstance(snapshot, Snapshot) else str(snapshot)
    if is_local(where):
        source: str | Path | bytes = local_path(where) / name
    else:
        snap = snapshot if isinstance(snapshot, Snapshot) else read_snapshot(snapshot)
        member = snap.members.get(name)
        if member is None:
            raise BatchError(f"{name} is not listed in the snapshot's {MANIFEST}")
        try:
            data = Storage(snap.uri).read_bytes(name, max_bytes=int(member["size"]))
        except (OSError, StorageError) as err:
            raise BatchError(f"cannot read {snap.uri}/{name}: {err}") from None
        if len(data) != int(member["size"]) or sha256_hex(data) != member["sha256"]:
            raise BatchError(f"{snap.uri}/{name} does not match its manifest (size or sha256): refused")
        source = data
    batch = load_batch(source, UNLIMITED)
    return batch.x.astype(np.uint8, copy=False), batch.y.astype(np.int64)
