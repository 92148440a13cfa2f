"""The landing zone: where users drop batches. A local folder by default; any fsspec URL works the same.

The landing zone is read-only to mlcd: batches are identified by the SHA-256 of their bytes and never moved,
renamed or deleted. Accepted batches are copied into a content-addressed store (snapshots are built from those
copies, so a user tidying the landing zone cannot change a snapshot); refused batches are copied into quarantine
next to a JSON file that says why.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlcd.files import printable_name
from mlcd.storage import Storage, filesystem

BATCH_SUFFIX = ".npz"
CHUNK_BYTES = 1 << 20
# A reference that is not valid UTF-8 travels between tasks (XCom, JSON) as the hex of its bytes.
_HEX_REF = "fsbytes:"


class SourceError(OSError):
    """The landed file itself could not be read (permissions, not a file, too large): its fault, not ours."""


class SourceGone(SourceError):
    """The landed file is no longer there (tidied away after it was listed): nothing to judge, nothing refused."""


@dataclass(frozen=True)
class LandedFile:
    """One file in the landing zone, as listed (stat only: nothing is read to list it).

    ``uri`` and ``name`` are the real ones (a local name that is not UTF-8 holds lone surrogates); use
    :attr:`display_name` / :attr:`display_uri` wherever they are stored or printed.
    """

    uri: str
    name: str
    size_bytes: int
    mtime: float | None = None  # seconds since the epoch; None where the store has none (objects appear whole)
    regular: bool = True  # False: a FIFO, device or broken link named *.npz, listed only to be refused unopened

    @property
    def display_name(self) -> str:
        return printable_name(self.name)

    @property
    def display_uri(self) -> str:
        return printable_name(self.uri)

    @property
    def mtime_ns(self) -> int:
        return -1 if self.mtime is None else int(round(self.mtime * 1e9))

    @property
    def ref(self) -> str:
        return ref_of(self.uri)

    def settled(self, settle_s: float, now: float | None = None) -> bool:
        """Unchanged (size and mtime) for ``settle_s``: any write moves the mtime, so a file still being copied in
        has a fresh one. A store without mtimes publishes objects whole, so those are always settled."""
        if self.mtime is None or settle_s <= 0:
            return True
        return (time.time() if now is None else now) - self.mtime >= settle_s

    def stat_key(self) -> str:
        """A stand-in batch key for a file whose bytes cannot be read: its place, size and mtime."""
        signature = f"{self.display_uri}|{self.size_bytes}|{self.mtime_ns}"
        return "stat-" + hashlib.sha256(signature.encode()).hexdigest()[:59]


def ref_of(uri: str) -> str:
    """A JSON- and UTF-8-safe reference to ``uri`` that :func:`uri_of` turns back into the real one."""
    try:
        uri.encode("utf-8")
    except UnicodeEncodeError:
        return _HEX_REF + os.fsencode(uri).hex()
    return uri


def uri_of(ref: str) -> str:
    if ref.startswith(_HEX_REF):
        return os.fsdecode(bytes.fromhex(ref[len(_HEX_REF) :]))
    return ref


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LandingZone:
    """Lists and reads batches under ``uri`` (a path or an fsspec URL such as ``memory://landing``)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/") if "://" in uri else str(Path(uri).expanduser().resolve())
        self.fs, self.root = filesystem(self.uri)  # with MLCD_STORAGE_OPTIONS for an object store

    def ensure(self) -> None:
        self.fs.makedirs(self.root, exist_ok=True)

    def list(self) -> list[LandedFile]:
        """Every regular ``*.npz`` file directly in the landing zone, sorted by name; a missing zone is empty.

        Only the listing's stat is used (name, type, size, mtime): no file is opened. Dot-names are in-flight
        copies and folders are skipped; FIFOs, devices and broken links are listed with ``regular=False`` so that
        intake can refuse them by name, and are never opened (a FIFO would block a read).
        """
        self.fs.invalidate_cache(self.root)  # an object store's listing cache would hide new batches
        if not self.fs.exists(self.root):
            return []
        files = []
        for info in self.fs.ls(self.root, detail=True):
            name = info["name"].rstrip("/").rsplit("/", 1)[-1]
            kind = info.get("type")
            if kind not in ("file", "other") or not name.endswith(BATCH_SUFFIX) or name.startswith("."):
                continue
            files.append(
                LandedFile(uri=self._uri_of(info["name"]), name=name, size_bytes=int(info.get("size") or 0),
                           mtime=_mtime(info), regular=kind == "file")
            )
        return sorted(files, key=lambda f: f.display_name)

    def _uri_of(self, path: str) -> str:
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return path if protocol in ("file", "local") else f"{protocol}://{path.lstrip('/')}"

    def stat(self, landed: LandedFile) -> LandedFile:
        """The file as it is now (size and mtime re-read)."""
        try:
            self.fs.invalidate_cache(self.fs._strip_protocol(landed.uri))
            info = self.fs.info(self.fs._strip_protocol(landed.uri))
        except FileNotFoundError:
            raise SourceGone("vanished from the landing zone after it was listed") from None
        return LandedFile(uri=landed.uri, name=landed.name, size_bytes=int(info.get("size") or 0), mtime=_mtime(info))

    def read(self, landed: LandedFile, max_bytes: int | None = None) -> bytes:
        """The whole file (tests and small files); refused above ``max_bytes`` (default: MLCD_MAX_BATCH_BYTES)."""
        limit = _max_bytes(max_bytes)
        chunks: list[bytes] = []
        self._stream(landed, limit, chunks.append)
        return b"".join(chunks)

    def sha256(self, landed: LandedFile, max_bytes: int | None = None) -> str:
        """The content hash, streamed in chunks (memory stays one chunk whatever the file's size)."""
        digest = hashlib.sha256()
        self._stream(landed, _max_bytes(max_bytes), digest.update)
        return digest.hexdigest()

    def copy_to(self, landed: LandedFile, target: Path, max_bytes: int | None = None) -> tuple[str, int]:
        """Stream the file into ``target`` (fsynced), hashing on the way: ``(sha256, size)``.

        What is judged afterwards is this private copy, so the landed file cannot change between the hash and
        the verdict.
        """
        digest = hashlib.sha256()
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as out:

            def sink(chunk: bytes) -> None:
                digest.update(chunk)
                out.write(chunk)

            size = self._stream(landed, _max_bytes(max_bytes), sink)
            out.flush()
            os.fsync(out.fileno())
        return digest.hexdigest(), size

    def _stream(self, landed: LandedFile, limit: int, sink: Any) -> int:
        if not landed.regular:
            raise SourceError("not a regular file (a FIFO, device or broken link); refused without opening it")
        if landed.size_bytes > limit:
            raise SourceError(f"file is {landed.size_bytes:,} bytes; the limit is {limit:,} (MLCD_MAX_BATCH_BYTES)")
        size = 0
        try:
            with self.fs.open(self.fs._strip_protocol(landed.uri), "rb") as fh:
                while chunk := fh.read(CHUNK_BYTES):
                    size += len(chunk)
                    if size > limit:  # it grew past the limit after it was listed
                        raise SourceError(f"file grew past the limit of {limit:,} bytes (MLCD_MAX_BATCH_BYTES) while read")
                    sink(chunk)
        except SourceError:
            raise
        except FileNotFoundError:
            raise SourceGone("vanished from the landing zone after it was listed") from None
        except OSError as err:
            raise SourceError(f"cannot read: {printable_name(err.strerror or str(err))}") from None
        return size

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


def _mtime(info: dict[str, Any]) -> float | None:
    value = info.get("mtime")
    if value is None:
        return None
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _max_bytes(max_bytes: int | None) -> int:
    if max_bytes is not None:
        return max_bytes
    from mlcd.settings import get_settings

    return get_settings().max_batch_bytes


def _storage(where: Storage | Path | str) -> Storage:
    return where if isinstance(where, Storage) else Storage(where)


def store_accepted_file(staged: Path, batch_hash: str, accepted: Storage | Path | str) -> str:
    """Publish a staged, fsynced copy into the content-addressed store; idempotent. Returns its location."""
    store = _storage(accepted)
    key = f"{batch_hash}.npz"
    if store.exists(key):
        staged.unlink(missing_ok=True)
        return store.location(key)
    return store.publish_file(staged, key)


def _reason_record(batch_hash: str, safe: str, reason: str, details: dict[str, Any]) -> dict[str, Any]:
    return {"batch_hash": batch_hash, "name": safe, "reason": reason, "details": details}


def quarantine_file(
    staged: Path | None, batch_hash: str, name: str, reason: str, details: dict[str, Any],
    qdir: Storage | Path | str,
) -> str:
    """Move a staged copy aside with ``reason.json`` (``staged`` None: the file could not be read, reason only).

    The copy is published first and ``reason.json`` last, so a quarantine folder with a reason is complete.
    Returns the folder's location.
    """
    folder = _storage(qdir).child(batch_hash)
    safe = printable_name(name).replace("/", "_")
    if staged is not None:
        if folder.exists(safe):
            staged.unlink(missing_ok=True)
        else:
            folder.publish_file(staged, safe)
    folder.write_json("reason.json", _reason_record(batch_hash, safe, reason, details))
    return folder.location()


def store_accepted(data: bytes, batch_hash: str, accepted: Storage | Path | str) -> str:
    """Copy accepted bytes into the content-addressed store; idempotent."""
    store = _storage(accepted)
    key = f"{batch_hash}.npz"
    if not store.exists(key):
        store.write_bytes(key, data)
    return store.location(key)


def quarantine(
    data: bytes, batch_hash: str, name: str, reason: str, details: dict[str, Any], qdir: Storage | Path | str
) -> str:
    """Copy refused bytes aside with ``reason.json``; the original in the landing zone stays as it was."""
    folder = _storage(qdir).child(batch_hash)
    safe = printable_name(name).replace("/", "_")
    if not folder.exists(safe):
        folder.write_bytes(safe, data)
    folder.write_json("reason.json", _reason_record(batch_hash, safe, reason, details))
    return folder.location()
