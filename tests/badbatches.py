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
