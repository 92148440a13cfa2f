"""Read a landed batch safely: an ``.npz`` with ``x`` (uint8 N×28×28) and ``y`` (integer labels 0–9).

A landed file is written by someone else and read by a worker that other batches wait for, so nothing in it is
trusted before it is checked, and nothing is allocated before its size is known to be within the limits:

1. the zip's end record is read first: a file with more than a handful of members is refused before its
   central directory is parsed (millions of entries would exhaust memory on their own);
2. each member is checked from the zip directory: only ``x.npy`` and ``y.npy``, not encrypted, declared
   uncompressed size and compression ratio within the limits (a zip bomb is refused without inflating a byte);
3. each member's npy header (``numpy.lib.format``) is read from the member stream: object dtypes are refused
   (loading never unpickles), and the declared shape, dtype and byte count are checked against the limits and
   against the member's size (a few hundred bytes declaring billions of images is refused here);
4. only then is each array allocated, once, at its declared size, and filled in chunks from the stream, so the
   peak memory of decoding is the batch's declared size (bounded by the limit) plus one chunk.

Structural problems are refused here with one readable line (:class:`BatchError`); everything about the
*content* (shape 28×28, dtype, pixel range, labels, NaN, class balance…) is judged by the Great Expectations suite
on the per-image summary, so the reason a person reads comes from the suite file.
"""

from __future__ import annotations

import io
import math
import os
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.lib.format as npy_format

from mlcd.files import printable_name

REQUIRED_KEYS = ("x", "y")
MEMBERS = tuple(f"{key}.npy" for key in REQUIRED_KEYS)
# A batch has two members; a few more are tolerated in the end record only to name them in the refusal.
MAX_MEMBERS = 16
MAX_CENTRAL_DIRECTORY_BYTES = 64 * 1024
CHUNK_BYTES = 1 << 20


class BatchError(ValueError):
    """A batch that cannot be read as images and labels; ``str(err)`` is the one-line reason."""


@dataclass(frozen=True)
class BatchLimits:
    """What a landed batch may declare. ``None`` means unlimited (only for mlcd's own snapshot files).

    Attributes:
        max_images: images (and labels) per batch (``MLCD_MAX_BATCH_IMAGES``).
        max_bytes: bytes of all arrays once decoded (``MLCD_MAX_UNCOMPRESSED_BYTES``): bounds decoding memory.
        max_ratio: uncompressed / compressed size of a member (``MLCD_MAX_COMPRESSION_RATIO``).
        max_file_bytes: size of the file itself (``MLCD_MAX_BATCH_BYTES``).
    """

    max_images: int | None = 500_000
    max_bytes: int | None = 512 * 1024 * 1024
    max_ratio: float | None = 100.0
    max_file_bytes: int | None = 512 * 1024 * 1024

    @classmethod
    def from_settings(cls, settings: Any | None = None) -> BatchLimits:
        """The limits configured by ``MLCD_*`` (see :mod:`mlcd.settings`)."""
        if settings is None:
            from mlcd.settings import get_settings

            settings = get_settings()
        return cls(
            max_images=settings.max_batch_images,
            max_bytes=settings.max_uncompressed_bytes,
            max_ratio=settings.max_compression_ratio,
            max_file_bytes=settings.max_batch_bytes,
        )


UNLIMITED = BatchLimits(max_images=None, max_bytes=None, max_ratio=None, max_file_bytes=None)


@dataclass(frozen=True)
class Batch:
    """Images and labels of one batch, as stored (no conversion)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True)
class _Header:
    shape: tuple[int, ...]
    fortran_order: bool
    dtype: np.dtype[Any]
    offset: int  # bytes of magic + header before the data

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.count * self.dtype.itemsize


def load_batch(source: bytes | str | Path, limits: BatchLimits | None = None) -> Batch:
    """Read a batch from bytes or a local path, within ``limits``.

    Args:
        source: the file's bytes, or a path to it (read as a stream: the file is never held in memory whole).
        limits: what the batch may declare; by default the configured limits for landed batches.

    Returns:
        The batch with ``x`` of rank 3 and ``y`` of rank 1 and equal length.

    Raises:
        BatchError: with a one-line reason when the file cannot be a batch or exceeds a limit.
    """
    limits = limits if limits is not None else BatchLimits.from_settings()
    if isinstance(source, (str, Path)):
        try:
            if not stat.S_ISREG(os.stat(source).st_mode):  # a FIFO or device would block or never end
                raise BatchError(f"{printable_name(str(source))} is not a regular file; refused without opening it")
            with open(source, "rb") as fh:
                return _load(fh, _size_of(fh), limits)
        except OSError as err:
            raise BatchError(f"cannot read {printable_name(str(source))}: {err.strerror or err}") from None
    return _load(io.BytesIO(source), len(source), limits)


def _size_of(fh: IO[bytes]) -> int:
    fh.seek(0, io.SEEK_END)
    size = fh.tell()
    fh.seek(0)
    return size


def _load(fh: IO[bytes], size: int, limits: BatchLimits) -> Batch:
    if size == 0:
        raise BatchError("file is empty (0 bytes)")
    if limits.max_file_bytes is not None and size > limits.max_file_bytes:
        raise BatchError(f"file is {size:,} bytes; the limit is {limits.max_file_bytes:,} (MLCD_MAX_BATCH_BYTES)")
    try:
        end = zipfile._EndRecData(fh)  # type: ignore[attr-defined]  # stdlib, stable since Python 2
    except OSError:
        end = None
    if not end:
        raise BatchError("not an .npz archive (not a zip file; truncated or another format)")
    entries, directory_bytes = int(end[zipfile._ECD_ENTRIES_TOTAL]), int(end[zipfile._ECD_SIZE])  # type: ignore[attr-defined]
    if entries > MAX_MEMBERS or directory_bytes > MAX_CENTRAL_DIRECTORY_BYTES:
        raise BatchError(
            f"archive lists {entries:,} members in a {directory_bytes:,}-byte directory; a batch holds x.npy and y.npy"
        )
    fh.seek(0)
    try:
        with zipfile.ZipFile(fh) as archive:
            infos = _check_members(archive.infolist(), limits)
            headers = {key: _read_header(archive, info) for key, info in infos.items()}
            _check_headers(headers, limits)
            x = _decode(archive, infos["x"], headers["x"])
            y = _decode(archive, infos["y"], headers["y"])
    except BatchError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, KeyError, ValueError) as err:
        raise BatchError(f"corrupt or truncated .npz: {_one_line(err)}") from None
    except (NotImplementedError, RuntimeError) as err:  # unsupported compression method; encrypted member
        raise BatchError(f"unsupported .npz: {_one_line(err)}") from None
    return Batch(x=x, y=y)


def _one_line(err: BaseException) -> str:
    return printable_name(" ".join(str(err).split()) or type(err).__name__)


def _check_members(infos: list[zipfile.ZipInfo], limits: BatchLimits) -> dict[str, zipfile.ZipInfo]:
    """The ``x``/``y`` members, checked from the directory alone (nothing is inflated)."""
    names = [info.filename for info in infos]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise BatchError(f"member(s) {', '.join(map(printable_name, duplicated))} appear twice; refused as ambiguous")
    by_name = {info.filename: info for info in infos}
    missing = [key for key in REQUIRED_KEYS if f"{key}.npy" not in by_name]
    if missing:
        found = ", ".join(printable_name(n.removesuffix(".npy")) for n in names) or "none"
        raise BatchError(
            f"missing array(s) {', '.join(missing)}; found {found} (a batch needs x: N×28×28 uint8 and y: N labels)"
        )
    unexpected = [n for n in names if n not in MEMBERS]
    if unexpected:
        raise BatchError(
            f"unexpected member(s) {', '.join(map(printable_name, unexpected))}; a batch holds only x.npy and y.npy"
        )
    total = 0
    for name in MEMBERS:
        info = by_name[name]
        if info.flag_bits & 0x1:
            raise BatchError(f"member {name} is encrypted")
        if limits.max_bytes is not None and info.file_size > limits.max_bytes:
            raise BatchError(
                f"member {name} inflates to {info.file_size:,} bytes; the limit is {limits.max_bytes:,}"
                " (MLCD_MAX_UNCOMPRESSED_BYTES)"
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if limits.max_ratio is not None and ratio > limits.max_ratio:
            raise BatchError(
                f"member {name} inflates {ratio:,.0f}x ({info.compress_size:,} -> {info.file_size:,} bytes);"
                f" the limit is {limits.max_ratio:g}x (MLCD_MAX_COMPRESSION_RATIO)"
            )
        total += info.file_size
    if limits.max_bytes is not None and total > limits.max_bytes:
        raise BatchError(
            f"x and y inflate to {total:,} bytes; the limit is {limits.max_bytes:,} (MLCD_MAX_UNCOMPRESSED_BYTES)"
        )
    return {name.removesuffix(".npy"): by_name[name] for name in MEMBERS}


def _read_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> _Header:
    """The npy header of a member, read from its stream (a few hundred bytes at most are inflated)."""
    with archive.open(info) as stream:
        try:
            version = npy_format.read_magic(stream)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(stream)
            elif version == (2, 0):
                shape, fortran, dtype = npy_format.read_array_header_2_0(stream)
            else:
                from numpy.lib import _format_impl  # the 3.0 header (UTF-8) has no public reader

                shape, fortran, dtype = _format_impl._read_array_header(stream, version)  # type: ignore[attr-defined]
        except ValueError as err:
            message = str(err)
            if "pickle" in message.lower() or "object" in message.lower():
                raise BatchError("holds object arrays (pickled Python objects); refused: loading would run code") from None
            raise BatchError(f"unreadable array header in {info.filename}: {_one_line(err)}") from None
        return _Header(shape=tuple(int(d) for d in shape), fortran_order=bool(fortran), dtype=dtype,
                       offset=stream.tell())


def _check_headers(headers: dict[str, _Header], limits: BatchLimits) -> None:
    """Refuse what the headers declare, before anything is allocated."""
    if any(h.dtype.hasobject for h in headers.values()):
        raise BatchError("holds object arrays (pickled Python objects); refused: loading would run code")
    x, y = headers["x"], headers["y"]
    for key, header in headers.items():
        n = header.shape[0] if header.shape else 1
        if limits.max_images is not None and n > limits.max_images:
            raise BatchError(
                f"{key} declares {n:,} {'images' if key == 'x' else 'labels'} (shape {header.shape});"
                f" the limit is {limits.max_images:,} (MLCD_MAX_BATCH_IMAGES)"
            )
    declared = x.nbytes + y.nbytes
    if limits.max_bytes is not None and declared > limits.max_bytes:
        raise BatchError(
            f"x {x.shape} {x.dtype} and y {y.shape} {y.dtype} declare {declared:,} bytes;"
            f" the limit is {limits.max_bytes:,} (MLCD_MAX_UNCOMPRESSED_BYTES)"
        )
    if x.dtype.kind not in "uif" or y.dtype.kind not in "uifU":
        raise BatchError(f"unsupported dtypes x={x.dtype}, y={y.dtype}: x must be numeric images, y labels")
    if len(x.shape) != 3:
        raise BatchError(f"x has shape {x.shape}; expected N×28×28 images")
    if len(y.shape) != 1:
        raise BatchError(f"y has shape {y.shape}; expected one label per image")
    if x.shape[0] != y.shape[0]:
        raise BatchError(f"x has {x.shape[0]} images but y has {y.shape[0]} labels")
    if x.shape[0] == 0:
        raise BatchError("batch is empty (0 images)")


def _decode(archive: zipfile.ZipFile, info: zipfile.ZipInfo, header: _Header) -> np.ndarray:
    """Allocate the declared array once and fill it in chunks: peak memory is the array plus one chunk."""
    expected = header.offset + header.nbytes
    if info.file_size != expected:
        raise BatchError(
            f"member {info.filename} declares {header.shape} {header.dtype} ({header.nbytes:,} bytes of data)"
            f" but holds {max(info.file_size - header.offset, 0):,}; truncated or forged"
        )
    flat = np.empty(header.count, dtype=header.dtype)
    raw = flat.view(np.uint8) if header.nbytes else np.empty(0, dtype=np.uint8)
    with archive.open(info) as stream:
        stream.seek(header.offset)
        filled = 0
        while filled < header.nbytes:
            chunk = stream.read(min(CHUNK_BYTES, header.nbytes - filled))
            if not chunk:
                raise BatchError(
                    f"corrupt or truncated .npz: {info.filename} ended after {filled:,} of {header.nbytes:,} bytes"
                )
            raw[filled : filled + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
            filled += len(chunk)
        stream.read(1)  # reaching the end makes zipfile check the member's CRC
    if header.fortran_order:
        return flat.reshape(header.shape[::-1]).transpose()
    return flat.reshape(header.shape)


def save_batch(path: str | Path, x: np.ndarray, y: np.ndarray) -> Path:
    """Write ``x``/``y`` as an uncompressed ``.npz`` batch (the landing format)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.savez(fh, x=x, y=y)
    return path


def batch_bytes(x: np.ndarray, y: np.ndarray) -> bytes:
    """The ``.npz`` bytes of a batch (for object stores and tests)."""
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y)
    return buf.getvalue()
