"""What a training run records besides the model: code version, confusion matrix, per-class metrics, and the
seal of the model it logged (digest, optional signature) that every loader checks.

The numbers are plain NumPy so they can be checked without MLflow; :func:`confusion_figure` draws with
matplotlib's object API (no pyplot, no display backend needed in a pod).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlcd import __version__
from mlcd.model_io import NUM_CLASSES

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def code_version(root: Path | None = None) -> str:
    """``MLCD_CODE_VERSION`` (set when an image is built), else the package version plus the git commit."""
    env = os.environ.get("MLCD_CODE_VERSION")
    if env:
        return env
    root = root or Path(__file__).resolve().parents[3]
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", "include"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__  # an installed wheel in an image: no checkout to ask
    return f"{__version__}+g{sha}{'.dirty' if dirty else ''}" if sha else __version__


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """``cm[i, j]`` = images of class ``i`` predicted as ``j``."""
    flat = np.asarray(y_true, dtype=np.int64) * num_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_metrics(cm: np.ndarray) -> dict[int, dict[str, float]]:
    """Precision, recall, F1 and support of each class from a confusion matrix (0 where undefined)."""
    out: dict[int, dict[str, float]] = {}
    for k in range(cm.shape[0]):
        tp = float(cm[k, k])
        predicted = float(cm[:, k].sum())
        actual = float(cm[k, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[k] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    return out


def per_class_metric_dict(per_class: dict[int, dict[str, float]], prefix: str = "val") -> dict[str, float]:
    """Flat MLflow metric names: ``val_recall_class_3`` …"""
    return {
        f"{prefix}_{name}_class_{k}": value
        for k, values in per_class.items()
        for name, value in values.items()
        if name != "support"
    }


def confusion_figure(cm: np.ndarray, title: str) -> Figure:
    """A labelled heat map of the confusion matrix."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 5.5), dpi=100)
    ax = fig.add_subplot()
    image = ax.imshow(cm, cmap="Blues")
    fig.colorbar(image, ax=ax)
    n = cm.shape[0]
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > threshold else "black")
    fig.tight_layout()
    return fig


def log_snapshot_inputs(snapshot_id: str, snapshot_path: str, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Record each split as an ``mlflow.data`` input whose digest is the snapshot id.

    The digest ties the run to the exact data version: two runs on the same snapshot show the same dataset.
    """
    import mlflow
    from mlflow.data.numpy_dataset import from_numpy

    for context, (x, y) in splits.items():
        with warnings.catch_warnings():
            # A local path matches MLflow's local-artifact source twice; its "assuming" warning is noise.
            warnings.simplefilter("ignore", UserWarning)
            dataset = from_numpy(
                features=x, targets=y, source=snapshot_path, name=f"snapshot-{snapshot_id}-{context}",
                digest=snapshot_id,
            )
        mlflow.log_input(dataset, context=context)


def epoch_metrics(logs: dict[str, Any]) -> dict[str, float]:
    """Keras' epoch logs as floats (Keras may hand back tensors or NumPy scalars)."""
    return {k: float(v) for k, v in logs.items() if np.isscalar(v) or np.ndim(v) == 0}


def seal_model(model_uri: str, tracking_uri: str | None = None, key: str | None = None) -> dict[str, str]:
    """Record the SHA-256 digest of a just-logged model artifact (and an HMAC signature when a key is set).

    The tags go on the logged model (what a registered version points at) and on the training run, so the
    gateway and evaluation can refuse an artifact that was changed afterwards (:func:`mlcd.model_io.load_predictor`).
    The key is ``key`` or ``MLCD_MODEL_SIGNING_KEY`` (a Secret or Connection); without one only the digest is
    recorded, which catches a changed artifact store but not someone who may also write tags.

    Returns:
        The tags written.
    """
    import mlflow

    from mlcd.model_io import (
        TAG_MODEL_SHA256,
        TAG_MODEL_SIGNATURE,
        _client,
        artifact_digest,
        resolve_model,
        sign_digest,
        signing_key,
    )

    ref = resolve_model(model_uri, tracking_uri)
    with tempfile.TemporaryDirectory(prefix="mlcd-seal-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=ref.download_uri, dst_path=tmp, tracking_uri=tracking_uri)
        digest = artifact_digest(local)
    tags = {TAG_MODEL_SHA256: digest}
    secret = signing_key(key)
    if secret:
        tags[TAG_MODEL_SIGNATURE] = sign_digest(digest, secret)
    client = _client(tracking_uri)
    if ref.logged_model_id:
        client.set_logged_model_tags(ref.logged_model_id, tags)
    if ref.run_id:
        for k, v in tags.items():
            client.set_tag(ref.run_id, k, v)
    return tags
