"""Every bad input the gate must refuse, built from real MNIST images. Shared by unit and integration tests."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def good_bytes(x: np.ndarray, y: np.ndarray) -> bytes:
    return _npz(x=x, y=y)


def bad_batches(x: np.ndarray, y: np.ndarray) -> dict[str, tuple[bytes, str]]:
    """name → (file bytes, a phrase the one-line reason must contain)."""
    good = good_bytes(x, y)
    nan_x = x.astype(np.float32)
    nan_x[3, 10, 10] = np.nan
    builders: dict[str, Callable[[], tuple[bytes, str]]] = {
        "not_a_zip": lambda: (b"this is a CSV, not an npz\n1,2,3\n", "not an .npz"),
        "truncated": lambda: (good[: len(good) // 2], "not an .npz"),
        "empty_file": lambda: (b"", "empty"),
        "missing_keys": lambda: (_npz(images=x, labels=y), "missing array"),
        "object_arrays": lambda: (_npz(x=np.array([{"a": 1}] * len(y), dtype=object), y=y), "object arrays"),
        "wrong_rank": lambda: (_npz(x=x.reshape(len(x), -1), y=y), "expected N×28×28"),
        "wrong_shape": lambda: (_npz(x=np.pad(x, ((0, 0), (2, 2), (2, 2))), y=y), "not 28x28"),
        "float_0_1": lambda: (_npz(x=x.astype(np.float32) / 255.0, y=y), "not uint8"),
        "nan_pixels": lambda: (_npz(x=nan_x, y=y), "NaN"),
        "empty_arrays": lambda: (_npz(x=x[:0], y=y[:0]), "empty"),
        "length_mismatch": lambda: (_npz(x=x, y=y[:-7]), "labels"),
        "labels_out_of_range": lambda: (_npz(x=x, y=np.where(y == 3, 11, y)), "labels outside 0-9"),
        "all_black": lambda: (_npz(x=np.zeros_like(x), y=y), "blank"),
        "inverted": lambda: (_npz(x=(255 - x).astype(np.uint8), y=y), "inverted"),
        "single_class": lambda: (_npz(x=x, y=np.full_like(y, 7)), "dominates"),
        "duplicates": lambda: (_npz(x=np.repeat(x[: len(x) // 4], 4, axis=0), y=np.repeat(y[: len(y) // 4], 4)),
                               "duplicate"),
        "too_small": lambda: (_npz(x=x[:40], y=y[:40]), "too small"),
    }
    return {name: build() for name, build in builders.items()}


# --- Hostile files: crafted to attack the reader itself, not the suite (tests/unit/test_intake_hostile.py) ---


def npy_header(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    """The magic and header of an ``.npy`` declaring ``shape`` of ``descr``, with no data after it."""
    import numpy.lib.format as npy_format

    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def zip_members(members: dict[str, bytes], compression: int | None = None) -> bytes:
    """A zip of raw member bytes (a hand-made ``.npz``)."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED if compression is None else compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def billions_of_images(n: int = 3_000_000_000) -> bytes:
    """A few hundred bytes whose headers declare ``n`` 28×28 images and labels (and hold none of them)."""
    return zip_members({"x.npy": npy_header((n, 28, 28)), "y.npy": npy_header((n,), "<i8")})


def forged_shape(n: int) -> bytes:
    """Headers declaring ``n`` images (within the image limit) but holding no data: a truncated or lying file."""
    return zip_members({"x.npy": npy_header((n, 28, 28)), "y.npy": npy_header((n,), "<i8")})


def zip_bomb(inflated_bytes: int = 1_250_000_000) -> bytes:
    """A well-formed ``.npz`` of zero images that inflates to ``inflated_bytes`` (about 1,000:1 deflate).

    The deflate stream is built from one compressed block repeated, so crafting a 1 GB bomb takes a fraction
    of a second instead of compressing a gigabyte.
    """
    import struct
    import zipfile
    import zlib

    n = inflated_bytes // 784
    header = npy_header((n, 28, 28))
    data_len = n * 784
    # Raw deflate of the whole member: the header bytes, then zeros in 1 MiB pieces (identical compressed
    # pieces after the first, computed once; Z_FULL_FLUSH keeps each piece independent).
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = comp.compress(header) + comp.flush(zlib.Z_FULL_FLUSH)
    piece = 1 << 20
    one = comp.compress(bytes(piece)) + comp.flush(zlib.Z_FULL_FLUSH)
    full, rest = divmod(data_len, piece)
    tail = comp.compress(bytes(rest)) + comp.flush(zlib.Z_FINISH)
    stream = first + one * full + tail
    crc, zeros = zlib.crc32(header), bytes(piece)
    for _ in range(full):  # the CRC over the inflated bytes, at zlib's speed (a second or so for 1 GB)
        crc = zlib.crc32(zeros, crc)
    crc = zlib.crc32(bytes(rest), crc)
    size = len(header) + data_len
    y = io.BytesIO()
    np.save(y, np.zeros(n, dtype=np.uint8))
    y_member = y.getvalue()
    # Zip by hand (zipfile would inflate nothing, but it would compress the gigabyte itself).
    out = io.BytesIO()
    entries = []
    for name, method, payload, crc_value, usize in (
        (b"x.npy", zipfile.ZIP_DEFLATED, stream, crc, size),
        (b"y.npy", zipfile.ZIP_DEFLATED, zlib.compress(y_member, 9)[2:-4], zlib.crc32(y_member), len(y_member)),
    ):
        offset = out.tell()
        zip64 = usize >= 0xFFFFFFFF
        extra = struct.pack("<HHQQ", 1, 16, usize, len(payload)) if zip64 else b""
        sizes = (0xFFFFFFFF, 0xFFFFFFFF) if zip64 else (len(payload), usize)
        out.write(struct.pack("<4sHHHHHIII HH".replace(" ", ""), b"PK\x03\x04", 45 if zip64 else 20, 0, method, 0,
                              0x21, crc_value, sizes[0], sizes[1], len(name), len(extra)))
        out.write(name + extra + payload)
        entries.append((name, method, crc_value, len(payload), usize, offset, zip64))
    directory_start = out.tell()
    for name, method, crc_value, csize, usize, offset, zip64 in entries:
        extra = struct.pack("<HHQQ", 1, 16, usize, csize) if zip64 else b""
        sizes = (0xFFFFFFFF, 0xFFFFFFFF) if zip64 else (csize, usize)
        out.write(struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 45 if zip64 else 20, 45 if zip64 else 20, 0,
                              method, 0, 0x21, crc_value, sizes[0], sizes[1], len(name), len(extra), 0, 0, 0, 0,
                              offset))
        out.write(name + extra)
    directory_size = out.tell() - directory_start
    out.write(struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(entries), len(entries), directory_size,
                          directory_start, 0))
    return out.getvalue()



# --- Peak memory of a child process ---

# Linux carries a process's peak RSS across fork and exec: a child forked from a large process (pytest with GX
# loaded) reports at least its parent's size. So the measured command is started by this small wrapper (a bare
# interpreter, about 10 MB), and the wrapper reports the rusage of that one child, as the kernel counted it.
_MEASURE = """
import json, os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as fh:
    json.dump({"code": os.waitstatus_to_exitcode(status), "maxrss_kib": usage.ru_maxrss}, fh)
"""


def run_measured(args: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> tuple[int, str, str, int, float]:
    """Run ``args``: ``(exit code, stdout, stderr, peak RSS in bytes of that process alone, seconds)``."""
    import json
    import os
    import subprocess
    import sys
    import tempfile
    import time

    with tempfile.NamedTemporaryFile(suffix=".json") as report:
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-I", "-S", "-c", _MEASURE, report.name, *args], capture_output=True,
                              text=True, env=env if env is not None else dict(os.environ), timeout=timeout)
        seconds = time.perf_counter() - t0
        assert done.returncode == 0, done.stderr
        measured = json.loads(open(report.name).read())
    return int(measured["code"]), done.stdout, done.stderr, int(measured["maxrss_kib"]) * 1024, seconds
