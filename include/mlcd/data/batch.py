"""Read a landed batch safely: an ``.npz`` with ``x`` (uint8 N×28×28) and ``y`` (integer labels 0–9).

Loading never unpickles (``allow_pickle=False``): an object array in a batch is refused, not executed.
Structural problems (not a zip, missing keys, wrong rank, length mismatch) are refused here with one readable
line; everything about the *content* (shape 28×28, dtype, pixel range, labels, NaN, class balance…) is judged by
the Great Expectations suite on the per-image summary, so the reason a person reads comes from the suite file.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REQUIRED_KEYS = ("x", "y")


class BatchError(ValueError):
    """A batch that cannot be read as images and labels; ``str(err)`` is the one-line reason."""


@dataclass(frozen=True)
class Batch:
    """Images and labels of one batch, as stored (no conversion)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])


def load_batch(source: bytes | str | Path) -> Batch:
    """Read a batch from bytes or a local path.

    Args:
        source: the file's bytes, or a path to it.

    Returns:
        The batch with ``x`` of rank 3 and ``y`` of rank 1 and equal length.

    Raises:
        BatchError: with a one-line reason when the file cannot be a batch.
    """
    if isinstance(source, (str, Path)):
        try:
            data = Path(source).read_bytes()
        except OSError as err:
            raise BatchError(f"cannot read {source}: {err.strerror or err}") from None
    else:
        data = source
    if not data:
        raise BatchError("file is empty (0 bytes)")
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise BatchError("not an .npz archive (not a zip file; truncated or another format)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            missing = [key for key in REQUIRED_KEYS if key not in archive.files]
            if missing:
                raise BatchError(
                    f"missing array(s) {', '.join(missing)}; found {', '.join(archive.files) or 'none'}"
                    " (a batch needs x: N×28×28 uint8 and y: N labels)"
                )
            x = archive["x"]
            y = archive["y"]
    except BatchError:
        raise
    except ValueError as err:
        if "pickle" in str(err).lower():
            raise BatchError("holds object arrays (pickled Python objects); refused: loading would run code") from None
        raise BatchError(f"unreadable array: {err}") from None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as err:
        raise BatchError(f"corrupt or truncated .npz: {err}") from None
    if x.dtype.kind not in "uif" or y.dtype.kind not in "uifU":
        raise BatchError(f"unsupported dtypes x={x.dtype}, y={y.dtype}: x must be numeric images, y labels")
    if x.ndim != 3:
        raise BatchError(f"x has shape {tuple(x.shape)}; expected N×28×28 images")
    if y.ndim != 1:
        raise BatchError(f"y has shape {tuple(y.shape)}; expected one label per image")
    if x.shape[0] != y.shape[0]:
        raise BatchError(f"x has {x.shape[0]} images but y has {y.shape[0]} labels")
    if x.shape[0] == 0:
        raise BatchError("batch is empty (0 images)")
    return Batch(x=x, y=y)


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
