"""The landing zone: where users drop batches. A local folder by default; any fsspec URL works the same.

The landing zone is read-only to mlcd: batches are identified by the SHA-256 of their bytes and never moved,
renamed or deleted. Accepted batches are copied into a content-addressed store (snapshots are built from those
copies, so a user tidying the landing zone cannot change a snapshot); refused batches are copied into quarantine
next to a JSON file that says why.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

from mlcd.files import atomic_write_bytes

BATCH_SUFFIX = ".npz"
# A batch of 70,000 MNIST images is ~55 MB; refuse what cannot be a batch before reading it into memory.
MAX_BATCH_BYTES = int(os.environ.get("MLCD_MAX_BATCH_BYTES", str(512 * 1024 * 1024)))


@dataclass(frozen=True)
class LandedFile:
    """One file in the landing zone."""

    uri: str
    name: str
    size_bytes: int


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LandingZone:
    """Lists and reads batches under ``uri`` (a path or an fsspec URL such as ``memory://landing``)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/") if "://" in uri else str(Path(uri).expanduser().resolve())
        self.fs, self.root = fsspec.core.url_to_fs(self.uri)

    def ensure(self) -> None:
        self.fs.makedirs(self.root, exist_ok=True)

    def list(self) -> list[LandedFile]:
        """Every ``*.npz`` directly in the landing zone, sorted by name; a missing zone is empty."""
        if not self.fs.exists(self.root):
            return []
        files = []
        for info in self.fs.ls(self.root, detail=True):
            name = info["name"].rstrip("/").rsplit("/", 1)[-1]
            if info.get("type") != "file" or not name.endswith(BATCH_SUFFIX) or name.startswith("."):
                continue
            files.append(LandedFile(uri=self._uri_of(info["name"]), name=name, size_bytes=int(info.get("size") or 0)))
        return sorted(files, key=lambda f: f.name)

    def _uri_of(self, path: str) -> str:
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return path if protocol in ("file", "local") else f"{protocol}://{path.lstrip('/')}"

    def read(self, landed: LandedFile) -> bytes:
        if landed.size_bytes > MAX_BATCH_BYTES:
            raise ValueError(f"{landed.name} is {landed.size_bytes} bytes; the limit is {MAX_BATCH_BYTES}")
        with fsspec.open(landed.uri, "rb") as fh:
            return bytes(fh.read())

    def land(self, source: str | Path, name: str | None = None) -> LandedFile:
        """Copy a local batch file into the landing zone (never overwriting a different file of that name)."""
        source = Path(source)
        data = source.read_bytes()
        name = name or source.name
        if not name.endswith(BATCH_SUFFIX):
            name += BATCH_SUFFIX
        self.ensure()
        target = f"{self.root}/{name}"
        if self.fs.exists(target):
            with self.fs.open(target, "rb") as fh:
                if sha256_bytes(fh.read()) == sha256_bytes(data):
                    return LandedFile(uri=self._uri_of(target), name=name, size_bytes=len(data))
            stem = name[: -len(BATCH_SUFFIX)]
            name = f"{stem}-{sha256_bytes(data)[:8]}{BATCH_SUFFIX}"
            target = f"{self.root}/{name}"
        # Write under a dot-name and rename so the watcher never reads a half-written batch.
        partial = f"{self.root}/.{name}.partial"
        with self.fs.open(partial, "wb") as fh:
            fh.write(data)
        self.fs.mv(partial, target)
        return LandedFile(uri=self._uri_of(target), name=name, size_bytes=len(data))


def store_accepted(data: bytes, batch_hash: str, accepted_dir: Path) -> Path:
    """Copy accepted bytes into the content-addressed store; idempotent."""
    target = accepted_dir / f"{batch_hash}.npz"
    if not target.exists():
        atomic_write_bytes(target, data)
    return target


def quarantine(data: bytes, batch_hash: str, name: str, reason: str, details: dict[str, Any], qdir: Path) -> Path:
    """Copy refused bytes aside with ``reason.json``; the original in the landing zone stays as it was."""
    folder = qdir / batch_hash
    copy = folder / name
    if not copy.exists():
        atomic_write_bytes(copy, data)
    record = {"batch_hash": batch_hash, "name": name, "reason": reason, "details": details}
    atomic_write_bytes(folder / "reason.json", json.dumps(record, indent=2, default=str).encode())
    return folder

