"""Load a logged model and predict: the one contract evaluation and serving share.

The model contract (every model builder must keep it): input is raw pixels, float32 ``N×28×28`` in 0–255
(preprocessing lives inside the model, so training, evaluation and serving cannot disagree about it); output is
``N×10`` logits. Models are logged in MLflow's TensorFlow/Keras flavour, loaded from ``runs:/…`` or
``models:/name@alias`` URIs. Keras' native format is not pickle: loading never runs untrusted code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True))


@dataclass
class Predictor:
    """A loaded Keras model with the mlcd contract."""

    model: Any
    model_uri: str

    def predict_logits(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Logits for raw-pixel images ``N×28×28`` (any numeric dtype)."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 2:
            x = x[None, ...]
        out = []
        for start in range(0, len(x), batch_size):
            # Calling the model directly avoids predict()'s per-call tf.function and callback overhead,
            # which dominates for the small batches serving sees.
            out.append(np.asarray(self.model(x[start : start + batch_size], training=False)))
        if not out:
            return np.zeros((0, NUM_CLASSES), dtype=np.float32)
        return np.concatenate(out).astype(np.float32)

    def predict_proba(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        return softmax(self.predict_logits(x, batch_size=batch_size))

    def predict_classes(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        return self.predict_logits(x, batch_size=batch_size).argmax(axis=1)


def load_predictor(model_uri: str, tracking_uri: str | None = None) -> Predictor:
    """Load ``model_uri`` (``runs:/<id>/model``, ``models:/<name>@<alias>``, ``models:/<name>/<version>``)."""
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.tensorflow.load_model(model_uri)
    return Predictor(model=model, model_uri=model_uri)
