"""Where mlcd keeps its files: one storage location by URL (``MLCD_STORAGE_URL``), on fsspec. Airflow-free.

The embedded default is ``file://`` + ``MLCD_HOME``: the same folders as always, written with atomic renames. On a
cluster it is an object store (``s3://bucket/mlcd``, ``gs://…``) that every worker, the training pod and the
gateways reach; nothing is then shared through a local disk. Layout under the storage URL::

    landing/                      # the landing zone (default of MLCD_LANDING_URI)
    batches/<sha256>.npz          # accepted batches, content-addressed
    quarantine/<key>/<name>       # refused batches, each with reason.json (written last)
    snapshots/<id>/{train,val,test}.npz + manifest.json (written last: names, sizes and sha256 of the members)
    data_docs/                    # the Great Expectations site (rendered locally, then uploaded)

Object stores have no rename, but a single object appears whole or not at all. So a multi-object write puts its
members first and its manifest last, and readers trust only published manifests: a snapshot without one does not
exist, and a re-run writes the same content-addressed members again and publishes the manifest (it converges).
Credentials come from the store's usual environment (``AWS_*``, ``FSSPEC_S3_*``, ``GOOGLE_APPLICATION_CREDENTIALS``)
or from ``MLCD_STORAGE_OPTIONS`` (a JSON object of fsspec storage options, e.g. ``{"endpoint_url": …}``), never from
a URL. ``s3fs`` / ``gcsfs`` are optional extras (``pip install mlcd[s3]``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec

from mlcd.files import atomic_write_bytes, publish_file
from mlcd.settings import parse_storage_options

LOCAL_PROTOCOLS = ("file", "local")
# Protocols that take no credentials or endpoint: MLCD_STORAGE_OPTIONS is not passed to them.
_PLAIN_PROTOCOLS = (*LOCAL_PROTOCOLS, "memory")
CHUNK_BYTES = 1 << 20
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 1 << 20  # a manifest is a few hundred bytes; anything near this is not one


class StorageError(OSError):
    """A storage location that cannot be used; ``str(err)`` is the one-line reason."""


def protocol_of(url: str) -> str:
    """``s3`` for ``s3://b/k``; ``file`` for a plain path or ``file://`` URL."""
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def is_local(url: str | Path) -> bool:
    return protocol_of(str(url)) in LOCAL_PROTOCOLS


def local_path(url: str | Path) -> Path:
    """The local path of a plain path or ``file://`` URL."""
    text = str(url)
    if text.startswith("file://"):
        text = text[len("file://") :]
    elif text.startswith("local://"):
        text = text[len("local://") :]
    return Path(text).expanduser()


def to_url(location: str | Path) -> str:
    """A full URL (``file:///abs/path`` for a local path); remote URLs as given, without a trailing slash."""
    text = str(location)
    if is_local(text):
        return "file://" + str(local_path(text).resolve())
    return text.rstrip("/")


def options_for(url: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The storage options for ``url``: ``options`` or ``MLCD_STORAGE_OPTIONS``, for remote protocols only.

    One deployment has one object store, so the options apply to every remote URL (the storage URL, the landing
    zone, a snapshot URI handed to a pod that has no ``MLCD_STORAGE_URL``).
    """
    if protocol_of(url) in _PLAIN_PROTOCOLS:
        return {}
    if options is not None:
        return dict(options)
    return parse_storage_options(os.environ.get("MLCD_STORAGE_OPTIONS"))


def filesystem(url: str, options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """``(fsspec filesystem, path inside it)`` for a path or URL, with its storage options."""
    try:
        return fsspec.core.url_to_fs(str(url), **options_for(str(url), options))
    except ImportError as err:
        proto = protocol_of(str(url))
        extra = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}.get(proto)
        hint = f" (pip install 'mlcd[{extra}]')" if extra else ""
        raise StorageError(f"no filesystem for {proto}:// URLs{hint}: {err}") from None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Storage:
    """A folder by URL: keys are ``/``-joined names under it.

    A local folder (``file://``) writes through a temporary file and an atomic, fsynced rename; any other store
    writes each object whole (a single PUT). Bounded reads refuse to read past a given size.
    """

    def __init__(self, url: str | Path, options: dict[str, Any] | None = None) -> None:
        self.url = to_url(url)
        self.options = options_for(self.url, options)
        self.fs, root = filesystem(self.url, self.options)
        self.root = root.rstrip("/") or root
        self.local: Path | None = local_path(self.url) if is_local(self.url) else None

    @classmethod
    def from_settings(cls, settings: Any = None) -> Storage:
        """The deployment's storage (``MLCD_STORAGE_URL`` / ``MLCD_STORAGE_OPTIONS``)."""
        if settings is None:
            from mlcd.settings import get_settings

            settings = get_settings()
        return cls(settings.storage_url or f"file://{settings.home}", settings.storage_options)

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    # -- names -------------------------------------------------------------------------------------------
    def child(self, *parts: str) -> Storage:
        return Storage(self.uri(*parts), self.options)

    def _path(self, *parts: str) -> str:
        key = "/".join(p.strip("/") for p in parts if p)
        return f"{self.root}/{key}" if key else self.root

    def uri(self, *parts: str) -> str:
        """The full URL of a key (``file:///…`` locally)."""
        key = "/".join(p.strip("/") for p in parts if p)
        return f"{self.url}/{key}" if key else self.url

    def location(self, *parts: str) -> str:
        """What the ledger and reports record: the plain path locally (as before), else the URL."""
        if self.local is not None:
            return str(self.local.joinpath(*parts)) if parts else str(self.local)
        return self.uri(*parts)

    # -- reads -------------------------------------------------------------------------------------------
    def exists(self, *parts: str) -> bool:
        return bool(self.fs.exists(self._path(*parts)))

    def size(self, *parts: str) -> int:
        return int(self.fs.size(self._path(*parts)))

    def listdir(self, *parts: str) -> list[str]:
        """Names directly under a key (objects and prefixes); empty when there is nothing."""
        path = self._path(*parts)
        self.fs.invalidate_cache(path)  # another process may have written since this instance listed
        try:
            entries = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        return sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def read_bytes(self, *parts: str, max_bytes: int) -> bytes:
        """The whole object, refused (StorageError) past ``max_bytes``; FileNotFoundError when absent."""
        chunks: list[bytes] = []
        total = 0
        with self.fs.open(self._path(*parts), "rb") as fh:
            while chunk := fh.read(min(CHUNK_BYTES, max_bytes + 1 - total)):
                total += len(chunk)
                if total > max_bytes:
                    raise StorageError(f"{self.uri(*parts)} is larger than {max_bytes:,} bytes; refused")
                chunks.append(chunk)
        return b"".join(chunks)

    def read_json(self, *parts: str, max_bytes: int = MAX_MANIFEST_BYTES) -> dict[str, Any] | None:
        """A JSON object, or None when absent (a manifest not published yet)."""
        try:
            data = self.read_bytes(*parts, max_bytes=max_bytes)
        except FileNotFoundError:
            return None
        value = json.loads(data)
        if not isinstance(value, dict):
            raise ValueError(f"{self.uri(*parts)} is not a JSON object")
        return value

    def get_file(self, key: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        self.fs.get_file(self._path(key), str(target))

    # -- writes ------------------------------------------------------------------------------------------
    def write_bytes(self, key: str, data: bytes) -> str:
        """Publish ``data`` under ``key`` whole (atomic rename locally, one PUT on a store); returns its location."""
        if self.local is not None:
            atomic_write_bytes(self.local / key, data)
        else:
            self.fs.pipe_file(self._path(key), data)
        return self.location(key)

    def write_json(self, key: str, value: dict[str, Any]) -> str:
        return self.write_bytes(key, json.dumps(value, indent=2, default=str).encode())

    def publish_file(self, staged: Path, key: str) -> str:
        """Move a staged, fsynced local file to ``key`` (renamed locally, uploaded then removed otherwise)."""
        if self.local is not None:
            publish_file(staged, self.local / key)
        else:
            self.fs.put_file(str(staged), self._path(key))
            staged.unlink(missing_ok=True)
        return self.location(key)

    def put_tree(self, folder: Path, key: str) -> int:
        """Upload every file under a local folder to ``key/…`` (Data Docs); returns how many were uploaded."""
        if self.local is not None and (self.local / key).resolve() == folder.resolve():
            return 0  # rendered in place
        count = 0
        for path in sorted(_files_under(folder)):
            rel = path.relative_to(folder).as_posix()
            self.write_bytes(f"{key}/{rel}", path.read_bytes())
            count += 1
        return count

    def remove(self, key: str) -> None:
        path = self._path(key)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)


def _files_under(folder: Path) -> Iterator[Path]:
    for root, _dirs, files in os.walk(folder):
        for name in files:
            yield Path(root) / name


def open_location(location: str | Path) -> tuple[Storage, str]:
    """``(storage of the parent folder, member name)`` of a file given by path or URL."""
    url = to_url(location)
    parent, _, name = url.rpartition("/")
    return Storage(parent), name


def read_location(location: str | Path, *, max_bytes: int) -> bytes:
    """The bytes of a file by path or URL, bounded."""
    storage, name = open_location(location)
    return storage.read_bytes(name, max_bytes=max_bytes)
