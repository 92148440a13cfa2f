"""The reference dataset, read offline: MNIST in the ``mnist.npz`` layout, or scikit-learn's real digits.

Nothing is downloaded at run time. The first of these that exists is used, and the log says which:

1. ``MLCD_DATA`` (an explicit choice: a file that is there but invalid is an error, not a silent fallback);
2. ``data/mnist.npz`` in the checkout;
3. the file Keras caches (``$KERAS_HOME/datasets/mnist.npz``, by default ``~/.keras/datasets/mnist.npz``), which
   anyone who ran the Keras MNIST tutorial has; an invalid cache is reported and skipped.

Every file is validated (the four keys, ``N×28×28`` uint8 images, integer labels 0–9, matching lengths) and read
without unpickling. Without one, the 1,797 real 8×8 handwritten digits that ship inside scikit-learn are scaled to
28×28 uint8 so the same model and suites apply.
"""

from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlcd.data.batch import save_batch
from mlcd.settings import get_settings

log = logging.getLogger(__name__)

MNIST_KEYS = ("x_train", "y_train", "x_test", "y_test")
DIGITS_SOURCE = "sklearn.datasets.load_digits (scaled to 28x28)"


@dataclass(frozen=True)
class ReferenceData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    origin: str = ""  # which lookup found it: "MLCD_DATA", "data/mnist.npz", "Keras cache" or "scikit-learn"

    @property
    def n_images(self) -> int:
        return len(self.x_train) + len(self.x_test)

    @property
    def name(self) -> str:
        """What a person reads: which dataset, where from, how many images."""
        if self.origin == "scikit-learn":
            return f"scikit-learn digits ({self.n_images:,} images, no MNIST file found)"
        return f"MNIST from {self.origin or 'file'} {self.source} ({self.n_images:,} images)"


def keras_cache_path() -> Path:
    """Where ``keras.datasets.mnist.load_data()`` keeps its download: ``$KERAS_HOME`` or ``~/.keras``."""
    base = os.environ.get("KERAS_HOME") or str(Path("~/.keras").expanduser())
    return Path(base) / "datasets" / "mnist.npz"


def reference_candidates() -> list[tuple[str, Path]]:
    """The files looked at, in order, each with the name of the rule that proposed it."""
    settings = get_settings()
    found: list[tuple[str, Path]] = []
    if settings.data_path:
        found.append(("MLCD_DATA", Path(settings.data_path).expanduser()))
    found.append(("data/mnist.npz", settings.project_root / "data" / "mnist.npz"))
    found.append(("Keras cache", keras_cache_path()))
    return found


def reference_path() -> Path | None:
    """The first candidate file that exists (``MLCD_DATA``, ``data/mnist.npz``, the Keras cache), else ``None``."""
    for _, path in reference_candidates():
        if path.is_file():
            return path
    return None


def _check_images(path: str | Path, key: str, x: np.ndarray) -> None:
    if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise ValueError(f"{path}: {key} has shape {x.shape}; expected N×28×28")
    if x.dtype != np.uint8:
        raise ValueError(f"{path}: {key} is {x.dtype}; expected uint8 pixels 0-255")
    if len(x) == 0:
        raise ValueError(f"{path}: {key} is empty")


def _check_labels(path: str | Path, key: str, y: np.ndarray, n: int) -> None:
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{path}: {key} has shape {y.shape}; expected {n} labels, one per image")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{path}: {key} is {y.dtype}; expected integer labels")
    if y.min() < 0 or y.max() > 9:
        raise ValueError(f"{path}: {key} has labels {int(y.min())}..{int(y.max())}; expected 0-9")


def load_mnist_npz(path: str | Path, origin: str = "") -> ReferenceData:
    """Read and validate an ``mnist.npz``-layout file without unpickling; a bad file is one ``ValueError`` line."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in MNIST_KEYS if k not in archive.files]
            if missing:
                raise ValueError(f"{path} lacks {', '.join(missing)} (expected the mnist.npz layout)")
            arrays = {k: archive[k] for k in MNIST_KEYS}
    except ValueError as err:
        if "pickle" in str(err).lower():  # numpy refuses object arrays rather than unpickling them
            raise ValueError(f"{path}: holds object arrays (refused: never unpickled)") from None
        if str(err).startswith(str(path)):
            raise
        raise ValueError(f"{path}: not an mnist.npz file ({err})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: unreadable ({err.__class__.__name__}: {err})") from None
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        _check_images(path, f"x_{split}", x)
        _check_labels(path, f"y_{split}", y, len(x))
    return ReferenceData(
        x_train=arrays["x_train"],
        y_train=arrays["y_train"].astype(np.int64),
        x_test=arrays["x_test"],
        y_test=arrays["y_test"].astype(np.int64),
        source=str(path),
        origin=origin,
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
    return ReferenceData(x[:cut], y[:cut], x[cut:], y[cut:], source=DIGITS_SOURCE, origin="scikit-learn")


def load_reference() -> ReferenceData:
    """The reference dataset: the first valid MNIST file found (see the module doc), else the scikit-learn digits."""
    for origin, path in reference_candidates():
        if not path.is_file():
            if origin == "MLCD_DATA":
                log.warning("MLCD_DATA=%s does not exist; looking further", path)
            continue
        try:
            ref = load_mnist_npz(path, origin=origin)
        except ValueError as err:
            if origin == "MLCD_DATA":  # asked for by name: never train on something else instead
                raise ValueError(f"MLCD_DATA: {err}") from None
            log.warning("%s skipped: %s", origin, err)
            continue
        log.info("reference data: %s", ref.name)
        return ref
    log.warning(
        "no MNIST file (MLCD_DATA, data/mnist.npz, %s); using scikit-learn's 1,797 real digits scaled to 28x28",
        keras_cache_path(),
    )
    return digits_as_mnist()


def write_sample_batches(
    out_dir: str | Path, sizes: list[int], seed: int = 0, ref: ReferenceData | None = None
) -> list[Path]:
    """Cut consecutive, disjoint batches of the given sizes from the reference training set.

    Args:
        out_dir: folder to write ``batch-001.npz`` … into.
        sizes: images per batch; they are capped by what the reference set holds (a warning says so).
        seed: shuffles the reference set once so each batch has every class.
        ref: the reference data (default: :func:`load_reference`).

    Returns:
        The written paths.
    """
    ref = ref if ref is not None else load_reference()
    x = np.concatenate([ref.x_train, ref.x_test])
    y = np.concatenate([ref.y_train, ref.y_test])
    order = np.random.default_rng(seed).permutation(len(x))
    paths: list[Path] = []
    start = 0
    for i, size in enumerate(sizes, start=1):
        take = order[start : start + size]
        if len(take) < size:
            log.warning("batch %d: %s holds %d images in all; cut %d of the %d asked for",
                        i, ref.source, len(x), len(take), size)
        if len(take) == 0:
            break
        start += len(take)
        paths.append(save_batch(Path(out_dir) / f"batch-{i:03d}.npz", x[take], y[take].astype(np.int64)))
    return paths
