"""The scikit-learn digits at the scale the tests need, for a machine without real MNIST.

A user's fresh clone has no MNIST file: the product then falls back to scikit-learn's 1,797 digits, which is
enough for the demo but not for tests that slice thousands of images. Every test reads its data through one
place (``MLCD_DATA``), so that place gets the same real digits, each also shifted by up to two pixels in each
direction (25 copies, ~45,000 images), train and test copies kept apart so no test image leaks into training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SHIFTS = tuple((dy, dx) for dy in range(-2, 3) for dx in range(-2, 3))


def _shifted(x: np.ndarray) -> np.ndarray:
    # The digits fill 24×24 inside a 2-pixel border, so a shift of up to 2 pixels never cuts ink off.
    return np.concatenate([np.roll(x, (dy, dx), axis=(1, 2)) for dy, dx in SHIFTS])


def write_digits_at_test_scale(path: Path, seed: int = 0) -> Path:
    """Write the shifted digits as an ``mnist.npz`` (``x_train, y_train, x_test, y_test``) and return ``path``."""
    from mlcd.data.reference import digits_as_mnist

    ref = digits_as_mnist()
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, x, y in (("train", ref.x_train, ref.y_train), ("test", ref.x_test, ref.y_test)):
        xs, ys = _shifted(x), np.tile(y, len(SHIFTS))
        order = rng.permutation(len(xs))  # every slice a test takes holds every digit and many shifts
        arrays[f"x_{split}"], arrays[f"y_{split}"] = xs[order], ys[order]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path
