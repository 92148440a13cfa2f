"""The reference dataset, read offline: MNIST in the ``mnist.npz`` layout, or scikit-learn's real digits.

Nothing is downloaded at run time. ``MLCD_DATA`` (or ``data/mnist.npz`` in the checkout) points at a file with
``x_train, y_train, x_test, y_test``; without one, the 1,797 real 8×8 handwritten digits that ship inside
scikit-learn are scaled to 28×28 uint8 so the same model and suites apply.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlcd.data.batch import save_batch
from mlcd.settings import get_settings

log = logging.getLogger(__name__)

MNIST_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class ReferenceData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str


def reference_path() -> Path | None:
    """``MLCD_DATA`` when set, else ``data/mnist.npz`` in the checkout when present, else ``None``."""
    settings = get_settings()
    if settings.data_path:
        return Path(settings.data_path)
    local = settings.project_root / "data" / "mnist.npz"
    return local if local.exists() else None


def load_mnist_npz(path: str | Path) -> ReferenceData:
    """Read an ``mnist.npz``-layout file without unpickling."""
    with np.load(path, allow_pickle=False) as archive:
        missing = [k for k in MNIST_KEYS if k not in archive.files]
        if missing:
            raise ValueError(f"{path} lacks {', '.join(missing)} (expected the mnist.npz layout)")
        arrays = {k: archive[k] for k in MNIST_KEYS}
    return ReferenceData(
        x_train=arrays["x_train"].astype(np.uint8, copy=False),
        y_train=arrays["y_train"].astype(np.int64),
        x_test=arrays["x_test"].astype(np.uint8, copy=False),
        y_test=arrays["y_test"].astype(np.int64),
        source=str(path),
    )


def digits_as_mnist() -> ReferenceData:
    """scikit-learn's ``load_digits`` (8×8, 16 grey levels) as 28×28 uint8 0–255, split 80/20 by index."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float64) * (255.0 / 16.0)  # 0..16 → 0..255
    # 8×8 → 24×24 by pixel replication, then a 2-pixel border like MNIST's centred digits.
    upscaled = np.kron(images, np.ones((3, 3)))
    x = np.pad(upscaled, ((0, 0), (2, 2), (2, 2))).round().clip(0, 255).astype(np.uint8)
    y = digits.target.astype(np.int64)
    cut = int(len(x) * 0.8)
    return ReferenceData(x[:cut], y[:cut], x[cut:], y[cut:], source="sklearn.datasets.load_digits (scaled to 28x28)")


def load_reference() -> ReferenceData:
    """The reference dataset: MNIST when a file is configured or present, else the scikit-learn digits."""
    path = reference_path()
    if path is not None and path.exists():
        return load_mnist_npz(path)
    if path is not None:
        log.warning("MLCD_DATA=%s does not exist; falling back to scikit-learn's digits", path)
    else:
        log.warning(
            "no MNIST file (set MLCD_DATA or put data/mnist.npz); using scikit-learn's 1,797 real digits "
            "scaled to 28x28"
        )
    return digits_as_mnist()


def write_sample_batches(out_dir: str | Path, sizes: list[int], seed: int = 0) -> list[Path]:
    """Cut consecutive, disjoint batches of the given sizes from the reference training set.

    Args:
        out_dir: folder to write ``batch-001.npz`` … into.
        sizes: images per batch; they are capped by what the reference set holds.
        seed: shuffles the reference set once so each batch has every class.

    Returns:
        The written paths.
    """
    ref = load_reference()
    x = np.concatenate([ref.x_train, ref.x_test])
    y = np.concatenate([ref.y_train, ref.y_test])
    order = np.random.default_rng(seed).permutation(len(x))
    paths: list[Path] = []
    start = 0
    for i, size in enumerate(sizes, start=1):
        take = order[start : start + size]
        if len(take) == 0:
            break
        start += len(take)
        paths.append(save_batch(Path(out_dir) / f"batch-{i:03d}.npz", x[take], y[take].astype(np.int64)))
    return paths
