"""The compiled model call: same probabilities as the eager model, any batch size, and a wrong input fails fast.

A wrong input shape must fail with ``ValueError`` from every thread, every time: ``tf.function``'s own binding
error leaves its lock held by the thread that failed, and the next call from another thread (the batcher's,
after a warm-up in a loader thread) would hang for ever. A broken canary must fail, never hang.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytestmark = pytest.mark.unit


def _models() -> tuple[object, object]:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    cnn = tf.keras.Sequential([
        tf.keras.Input((28, 28)),
        tf.keras.layers.Rescaling(1 / 255),
        tf.keras.layers.Reshape((28, 28, 1)),
        tf.keras.layers.Conv2D(8, 3, activation="relu"),
        tf.keras.layers.MaxPooling2D(),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(10),
    ])
    flat = tf.keras.Sequential([tf.keras.Input((784,)), tf.keras.layers.Dense(10)])
    return cnn, flat


def test_compiled_matches_eager_at_every_batch_size_with_one_trace() -> None:
    from mlcd.model_io import Predictor
    from mlcd.serving.compiled import CompiledProba, compiled_proba

    cnn, _ = _models()
    predictor = Predictor(cnn, "test")
    fn = compiled_proba(predictor)
    assert isinstance(fn, CompiledProba)
    x = np.random.default_rng(0).integers(0, 256, (64, 28, 28)).astype(np.float32)
    for n in (1, 3, 32, 64):
        assert np.abs(fn(x[:n]) - predictor.predict_proba(x[:n])).max() <= 1e-5
    assert fn(x[:5].astype(np.uint8)).dtype == np.float32  # any numeric input is read as float32 pixels
    assert fn.graph.experimental_get_tracing_count() == 1


def test_a_wrong_input_shape_fails_from_every_thread_and_never_hangs() -> None:
    from mlcd.model_io import Predictor
    from mlcd.serving.compiled import compiled_proba

    _, flat = _models()
    fn = compiled_proba(Predictor(flat, "test"))
    wrong = np.zeros((1, 28, 28), dtype=np.float32)
    with pytest.raises(ValueError, match="model input must be N×784, got 1×28×28"):
        fn(wrong)  # as the loader's warm-up does, in its own thread
    with ThreadPoolExecutor(1) as other:  # then the batcher's thread
        for _ in range(3):
            with pytest.raises(ValueError, match="model input must be N×784"):
                other.submit(fn, wrong).result(timeout=30)
        assert other.submit(fn, np.zeros((2, 784), dtype=np.float32)).result(timeout=30).shape == (2, 10)
