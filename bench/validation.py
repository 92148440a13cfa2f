"""Validation throughput: the GX gate (summary frame included) against plain NumPy checks of the same rules.

Both engines read the same suite file (expectations/mnist_batch.json) and judge the same 70,000 MNIST images in
the same run; imports and the one-off GX context build are excluded (reported separately). Prints images/s for
both and the ratio. Target: the GX gate validates 70,000 images in under 3 s on a 2-core machine.

    make bench            # or: .venv/bin/python bench/validation.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np

from mlcd.data.batch import Batch
from mlcd.data.reference import load_reference
from mlcd.settings import get_settings
from mlcd.validation.gate import get_gate, load_suite_dict
from mlcd.validation.summary import INK_THRESHOLD


def numpy_rules(x: np.ndarray, y: np.ndarray, suite: dict[str, Any]) -> list[str]:
    """The suite's rules computed directly on the arrays (the peer): returns the failed reasons."""
    n = len(x)
    flat = x.reshape(n, -1)
    columns: dict[str, np.ndarray] = {
        "label": y,
        "height": np.full(n, x.shape[1]),
        "width": np.full(n, x.shape[2]),
        "dtype": np.full(n, str(x.dtype), dtype=object),
        "has_nan": np.isnan(flat).any(axis=1) if flat.dtype.kind == "f" else np.zeros(n, dtype=bool),
        "pixel_min": flat.min(axis=1).astype(np.float64),
        "pixel_max": flat.max(axis=1).astype(np.float64),
        "mean_intensity": flat.mean(axis=1, dtype=np.float64),
        "ink_ratio": (flat > INK_THRESHOLD).mean(axis=1),
    }
    uniq, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    columns["class_share"] = (counts / n)[inverse]
    _, first = np.unique(np.ascontiguousarray(flat).view(np.dtype((np.void, flat.shape[1]))).ravel(),
                         return_index=True)
    duplicate_share = 1 - len(first) / n
    failed = []
    for exp in suite["expectations"]:
        kw, kind = exp["kwargs"], exp["type"]
        col = columns.get(kw.get("column", ""))
        lo, hi = kw.get("min_value", -np.inf), kw.get("max_value", np.inf)
        mostly = kw.get("mostly", 1.0)
        if kind == "expect_table_row_count_to_be_between":
            ok = lo <= n <= hi
        elif kind == "expect_column_values_to_be_in_set":
            ok = np.isin(col, kw["value_set"]).mean() >= mostly
        elif kind == "expect_column_values_to_be_between":
            ok = ((col >= lo) & (col <= hi)).mean() >= mostly
        elif kind == "expect_column_mean_to_be_between":
            ok = lo <= col.mean() <= hi
        elif kind == "expect_column_max_to_be_between":
            ok = lo <= col.max() <= hi
        elif kind == "expect_column_min_to_be_between":
            ok = lo <= col.min() <= hi
        elif kind == "expect_column_values_to_be_unique":
            ok = duplicate_share <= 1 - mostly
        elif kind == "expect_column_unique_value_count_to_be_between":
            ok = lo <= len(uniq) <= hi
        else:
            raise ValueError(f"the NumPy peer does not know {kind}")
        if not ok:
            failed.append(exp["meta"]["reason"])
    return failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=70_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    ref = load_reference()
    pool_x = np.concatenate([ref.x_train, ref.x_test])
    pool_y = np.concatenate([ref.y_train, ref.y_test])
    idx = np.arange(args.images) % len(pool_x)  # the digits fallback has 1,797 images: tile them
    x, y = pool_x[idx], pool_y[idx]
    if len(pool_x) < args.images:  # tiled data would fail the duplicate rule: make each copy distinct
        x = x.copy()
        x[:, 0, 0] = (np.arange(args.images) % 251).astype(np.uint8)
    settings = get_settings()
    suite = load_suite_dict(settings.expectations_dir)

    import great_expectations  # noqa: F401 - imports are excluded from every figure

    t0 = time.perf_counter()
    gate = get_gate(settings.expectations_dir)  # context build: one-off per process
    build_s = time.perf_counter() - t0
    gate.validate(Batch(x[:1000], y[:1000]))  # warm caches

    gx_times, np_times = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        outcome = gate.validate(Batch(x, y))
        gx_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        failed = numpy_rules(x, y, suite)
        np_times.append(time.perf_counter() - t0)
    assert outcome.passed, outcome.reason
    assert not failed, failed
    gx_s, np_s = statistics.median(gx_times), statistics.median(np_times)
    print(f"data: {args.images} images from {ref.source}; median of {args.repeats} runs")
    print(f"{'engine':<34}{'seconds':>10}{'images/s':>14}")
    print(f"{'GX gate (summary frame + suite)':<34}{gx_s:>10.3f}{args.images / gx_s:>14,.0f}")
    print(f"{'plain NumPy, same rules':<34}{np_s:>10.3f}{args.images / np_s:>14,.0f}")
    print(f"ratio GX/NumPy time: {gx_s / np_s:.2f}x   (GX context build, once per process: {build_s:.2f} s)")
    print(f"target: GX gate under 3 s for 70,000 images -> {'MET' if gx_s < 3 else 'MISSED'}")


if __name__ == "__main__":
    main()
