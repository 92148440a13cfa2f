"""The served model as one compiled TensorFlow graph: the call the micro-batcher makes, without eager overhead.

Calling a Keras 3 model eagerly walks its layers in Python on every call: on the reference CNN that is about
6 ms of CPU (holding the GIL, so the event loop stalls with it) for a single image and most of a batch of 32's
cost. Traced once into a ``tf.function`` with an unknown batch dimension, the same weights and kernels run as one
graph: 3-5x less time per call at the batch sizes serving sees, and the GIL is released while the graph runs.
The probabilities are the model's logits through :func:`mlcd.model_io.softmax`, exactly what
:meth:`mlcd.model_io.Predictor.predict_proba` computes; only float rounding of fused kernels may differ (the
tests hold it to 1e-5). A model that cannot be traced is served eagerly, with the reason logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from mlcd.model_io import Predictor, softmax

log = logging.getLogger(__name__)

PredictFn = Callable[[np.ndarray], np.ndarray]


def _input_spec(model: Any) -> Any:
    """``TensorSpec([None, *shape])`` of the model's one float input; ``None`` when it has no single known input."""
    import tensorflow as tf

    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs) != 1:
        return None
    shape = tuple(inputs[0].shape)
    if not shape or any(d is None for d in shape[1:]):
        return None
    return tf.TensorSpec((None, *shape[1:]), tf.float32)


class CompiledProba:
    """``x`` (float32 ``N×…``) → ``N×classes`` probabilities through one traced graph.

    The graph is called as its one concrete function, after the input's shape is checked here: a wrong shape is
    a ``ValueError`` (as from the eager model) and never reaches ``tf.function``'s argument binding, whose
    failure leaves the function's lock held by the failing thread (TensorFlow 2.21), so that a broken canary's
    next call from the batcher's thread would wait forever instead of failing.
    """

    def __init__(self, graph: Any, shape: tuple[int, ...]) -> None:
        self.graph = graph  # the tf.function (tests read its tracing count)
        self.shape = shape  # per-row input shape
        self._concrete = graph.get_concrete_function()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.shape[1:] != self.shape:
            raise ValueError(f"model input must be N×{'×'.join(map(str, self.shape))}, got "
                             f"{'×'.join(map(str, x.shape))}")
        return softmax(np.asarray(self._concrete(x), dtype=np.float32))


def compiled_proba(predictor: Predictor) -> PredictFn:
    """The predictor's probabilities through one traced graph, or its eager ``predict_proba`` as a fallback."""
    import tensorflow as tf

    model = predictor.model
    spec = _input_spec(model)
    if spec is None:
        log.warning("model %s has no single fixed-shape input: served eagerly (slower)", predictor.model_uri)
        return predictor.predict_proba

    # One trace for every batch size (the batch dimension is None): never a retrace on the request path.
    @tf.function(input_signature=[spec])
    def logits(x: Any) -> Any:
        return model(x, training=False)

    try:
        logits.get_concrete_function()  # trace now, at load time, so a model that cannot be traced falls back
    except Exception as exc:  # noqa: BLE001 - serving eagerly is slower, never wrong
        log.warning("model %s could not be compiled (%s: %s): served eagerly", predictor.model_uri,
                    type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
        return predictor.predict_proba
    return CompiledProba(logits, tuple(spec.shape[1:]))
