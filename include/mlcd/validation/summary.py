"""The per-image summary frame that the expectation suite judges.

Validating 784 pixel columns would make the suite unreadable and slow; one row per image with a handful of
columns says everything the rules need (shape, dtype, range, NaN, brightness, ink, duplicates, class balance),
and computing it is vectorised NumPy.
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pandas as pd

INK_THRESHOLD = 127  # a pixel "has ink" above half scale on the 0–255 MNIST scale

SUMMARY_COLUMNS = (
    "label",
    "height",
    "width",
    "dtype",
    "has_nan",
    "pixel_min",
    "pixel_max",
    "mean_intensity",
    "ink_ratio",
    "image_hash",
    "class_share",
)


def image_hashes(x: np.ndarray) -> np.ndarray:
    """A short content hash per image (duplicates share it)."""
    flat = np.ascontiguousarray(x).reshape(len(x), -1)
    return np.array([hashlib.blake2b(row.tobytes(), digest_size=8).hexdigest() for row in flat], dtype=object)


def summarize(x: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    """One row per image: the columns in :data:`SUMMARY_COLUMNS`.

    Args:
        x: images N×H×W of any numeric dtype (as landed: the suite judges dtype and range).
        y: labels, N.
    """
    n = len(x)
    flat = x.reshape(n, -1)
    if flat.dtype.kind == "f":
        has_nan = np.isnan(flat).any(axis=1)
        with warnings.catch_warnings():  # an all-NaN image has no min: NaN, which has_nan reports
            warnings.simplefilter("ignore", RuntimeWarning)
            pixel_min = np.nanmin(flat, axis=1).astype(np.float64)
            pixel_max = np.nanmax(flat, axis=1).astype(np.float64)
        finite = np.nan_to_num(flat, nan=0.0)
        mean = finite.mean(axis=1, dtype=np.float64)
        ink = (finite > INK_THRESHOLD).mean(axis=1)
    else:
        has_nan = np.zeros(n, dtype=bool)
        pixel_min = flat.min(axis=1).astype(np.float64)
        pixel_max = flat.max(axis=1).astype(np.float64)
        mean = flat.mean(axis=1, dtype=np.float64)
        ink = (flat > INK_THRESHOLD).mean(axis=1)
    labels = pd.Series(y)
    share = labels.map(labels.value_counts(normalize=True)).to_numpy(dtype=np.float64)
    return pd.DataFrame(
        {
            "label": labels,
            "height": np.full(n, x.shape[1], dtype=np.int64),
            "width": np.full(n, x.shape[2], dtype=np.int64),
            "dtype": np.full(n, str(x.dtype), dtype=object),
            "has_nan": has_nan,
            "pixel_min": pixel_min,
            "pixel_max": pixel_max,
            "mean_intensity": mean,
            "ink_ratio": ink,
            "image_hash": image_hashes(x),
            "class_share": share,
        }
    )
