from __future__ import annotations

import io
import os
import time
import tracemalloc
import warnings
import zipfile

import numpy as np
import pytest

from mlcd.data.batch import CHUNK_BYTES, BatchError, BatchLimits, load_batch
from tests.badbatches import bad_batches, billions_of_images, forged_shape, good_bytes, zip_bomb, zip_members

pytestmark = pytest.mark.unit

STRUCTURAL = {"not_a_zip", "truncated", "empty_file", "missing_keys", "object_arrays", "wrong_rank",
              "empty_arrays", "length_mismatch"}


@pytest.fixture(scope="module")
def sample(reference_data):  # type: ignore[no-untyped-def]
    return reference_data.x_train[:400], reference_data.y_train[:400]


def test_good_batch_loads_as_stored(sample) -> None:  # type: ignore[no-untyped-def]
    x, y = sample
    batch = load_batch(good_bytes(x, y))
    assert batch.x.dtype == np.uint8 and batch.x.shape == x.shape
    np.testing.assert_array_equal(batch.y, y)


@pytest.mark.parametrize("name", sorted(STRUCTURAL))
def test_structural_problems_refused_with_one_line_reason(sample, name: str) -> None:  # type: ignore[no-untyped-def]
    data, phrase = bad_batches(*sample)[name]
    with pytest.raises(BatchError) as err:
        load_batch(data)
    message = str(err.value)
    assert phrase in message
    assert "\n" not in message and "Traceback" not in message


def test_object_arrays_are_never_unpickled(tmp_path, sample) -> None:  # type: ignore[no-untyped-def]
    # A pickle payload that would create a file if it ran.
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.npz"
    np.savez(path, x=np.array([Evil()], dtype=object), y=np.array([1]))
    with pytest.raises(BatchError, match="object arrays"):
        load_batch(path)
    assert not marker.exists()


def test_unreadable_path_is_a_batch_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BatchError, match="cannot read"):
        load_batch(tmp_path / "missing.npz")
    os.mkfifo(tmp_path / "pipe.npz")  # opening it for reading would block forever
    with pytest.raises(BatchError, match="not a regular file"):
        load_batch(tmp_path / "pipe.npz")


# --- Hostile files: refused from the zip directory and the npy headers, before anything is allocated ---


def _refused_within(data: bytes, limits: BatchLimits | None = None) -> tuple[str, int, float]:
    """Load ``data`` expecting a refusal: ``(reason, peak bytes NumPy/Python allocated, seconds)``."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(BatchError) as err:
            load_batch(data, limits)
        seconds = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message
    return message, peak, seconds


def test_header_declaring_billions_of_images_is_refused_before_allocating() -> None:
    data = billions_of_images(3_000_000_000)
    assert len(data) < 1000  # a few hundred bytes that declare 2.35 TB of images
    reason, peak, seconds = _refused_within(data)
    assert "declares 3,000,000,000 images" in reason and "MLCD_MAX_BATCH_IMAGES" in reason
    assert peak < 1 << 20 and seconds < 1.0  # nothing near the declared size was allocated


def test_header_declaring_more_data_than_the_member_holds_is_refused_before_allocating() -> None:
    # 400,000 images is within every limit, but the member holds no data: refused, not allocated (313 MB).
    reason, peak, _ = _refused_within(forged_shape(400_000))
    assert "truncated or forged" in reason
    assert peak < 1 << 20


def test_declared_bytes_beyond_the_limit_are_refused_from_the_header() -> None:
    limits = BatchLimits(max_images=None, max_bytes=10_000_000, max_ratio=None, max_file_bytes=None)
    reason, peak, _ = _refused_within(forged_shape(100_000), limits)  # 78.4 MB declared
    assert "declare 79,200,000 bytes" in reason and "MLCD_MAX_UNCOMPRESSED_BYTES" in reason
    assert peak < 1 << 20


def test_zip_bomb_is_refused_from_the_zip_directory_without_inflating() -> None:
    bomb = zip_bomb(1_250_000_000)
    assert len(bomb) < 1_300_000  # about 1.2 MB that inflate to 1.25 GB
    reason, peak, seconds = _refused_within(bomb)
    assert "inflates to 1,249,999,536 bytes" in reason and "MLCD_MAX_UNCOMPRESSED_BYTES" in reason
    assert peak < 1 << 20 and seconds < 1.0


def test_compression_ratio_beyond_the_limit_is_refused() -> None:
    bomb = zip_bomb(50_000_000)  # within the size limits, but 1,000:1
    reason, peak, _ = _refused_within(bomb)
    assert "x.npy inflates 1,009x" in reason and "MLCD_MAX_COMPRESSION_RATIO" in reason
    assert peak < 1 << 20


def test_decoding_peak_memory_is_the_declared_array_plus_one_chunk() -> None:
    # The same compressed member, allowed: decoded into one preallocated array, never a second copy.
    bomb = zip_bomb(50_000_000)
    limits = BatchLimits(max_images=None, max_bytes=None, max_ratio=None, max_file_bytes=None)
    tracemalloc.start()
    try:
        batch = load_batch(bomb, limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    declared = batch.x.nbytes + batch.y.nbytes
    assert batch.x.shape == (63_775, 28, 28) and not batch.x.any()
    assert declared <= peak < declared + 4 * CHUNK_BYTES


def test_file_beyond_the_size_limit_is_refused_unread(sample) -> None:  # type: ignore[no-untyped-def]
    data = good_bytes(*sample)
    limits = BatchLimits(max_file_bytes=len(data) - 1)
    reason, _, _ = _refused_within(data, limits)
    assert f"file is {len(data):,} bytes" in reason and "MLCD_MAX_BATCH_BYTES" in reason


def test_unexpected_and_duplicated_members_are_refused(sample) -> None:  # type: ignore[no-untyped-def]
    x, y = sample
    extra = _npz_bytes(x=x, y=y, notes=np.arange(3))
    assert "unexpected member(s) notes.npy" in _refused_within(extra)[0]
    members = {"x.npy": _npy(x), "y.npy": _npy(y)}
    twice = zip_members(members) + b""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name it is asked to write
        for name, payload in [*members.items(), ("y.npy", _npy(y))]:
            zf.writestr(name, payload)
    assert "y.npy appear twice" in _refused_within(buf.getvalue())[0]
    assert len(load_batch(twice)) == len(x)


def test_archive_with_thousands_of_members_is_refused_from_its_end_record() -> None:
    many = zip_members({f"m{i}.npy": b"" for i in range(5000)})
    reason, peak, _ = _refused_within(many)
    assert "lists 5,000 members" in reason
    assert peak < 1 << 20  # the central directory was never parsed into 5,000 ZipInfo objects


def test_hostile_member_names_stay_one_printable_line(sample) -> None:  # type: ignore[no-untyped-def]
    x, y = sample
    odd = zip_members({"x.npy": _npy(x), "y.npy": _npy(y), "evil\nline\udcff.npy".encode("utf-8", "surrogateescape")
                       .decode("cp437"): b""})
    reason, _, _ = _refused_within(odd)
    assert reason.startswith("unexpected member(s) evil\\nline")


def test_deflated_fortran_order_and_big_endian_batches_load_as_stored(sample) -> None:  # type: ignore[no-untyped-def]
    x, y = sample
    buf = io.BytesIO()
    np.savez_compressed(buf, x=np.asfortranarray(x), y=y.astype(">i4"))
    batch = load_batch(buf.getvalue())
    np.testing.assert_array_equal(batch.x, x)
    np.testing.assert_array_equal(batch.y, y)
    assert batch.y.dtype == np.dtype(">i4")


def test_corrupt_member_data_is_a_one_line_refusal(sample) -> None:  # type: ignore[no-untyped-def]
    x, y = sample
    data = bytearray(zip_members({"x.npy": _npy(x), "y.npy": _npy(y)}))
    at = data.index(_npy(x)[:64]) + 5000  # a pixel inside x's data: the CRC no longer matches
    data[at] ^= 0xFF
    reason, _, _ = _refused_within(bytes(data))
    assert reason.startswith("corrupt or truncated .npz") and "CRC" in reason


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()
