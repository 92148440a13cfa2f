"""Model builders: the plug-in point for the model, and the reference MNIST CNN.

A builder returns a *compiled* Keras model that keeps the contract of :mod:`mlcd.model_io`: input raw pixels,
float32 ``N×28×28`` in 0–255 (rescaling and the channel axis live inside the model, so training, evaluation
and serving cannot disagree about preprocessing); output ``N×10`` logits in float32.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from mlcd.model_io import IMAGE_SHAPE, NUM_CLASSES

if TYPE_CHECKING:
    import keras

DEFAULT_MODEL = "cnn"


@runtime_checkable
class ModelBuilder(Protocol):
    """What the trainer needs from a model: a name, its hyper-parameters, and a compiled model."""

    name: str

    def build(self) -> keras.Model:
        """A fresh compiled model under the current Keras dtype policy, keeping the mlcd model contract."""
        ...

    def params(self) -> dict[str, Any]:
        """Hyper-parameters to log with the run."""
        ...


def compile_classifier(model: keras.Model, learning_rate: float) -> keras.Model:
    """Adam and sparse categorical cross-entropy from logits: the training setup every builder shares."""
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


@dataclass(frozen=True)
class ReferenceCNN:
    """Conv2D 32 → MaxPool → Conv2D 64 → MaxPool → Flatten → Dense 64 → Dense 10 logits; Adam; sparse CE."""

    name: str = "reference-cnn"
    conv1_filters: int = 32
    conv2_filters: int = 64
    dense_units: int = 64
    learning_rate: float = 1e-3

    def params(self) -> dict[str, Any]:
        return {f"model.{k}": v for k, v in asdict(self).items()}

    def build(self) -> keras.Model:
        import keras
        from keras import layers

        model = keras.Sequential(
            [
                keras.Input(shape=IMAGE_SHAPE, dtype="float32", name="pixels"),
                layers.Rescaling(1.0 / 255.0),
                layers.Reshape((*IMAGE_SHAPE, 1)),
                layers.Conv2D(self.conv1_filters, 3, activation="relu"),
                layers.MaxPooling2D(),
                layers.Conv2D(self.conv2_filters, 3, activation="relu"),
                layers.MaxPooling2D(),
                layers.Flatten(),
                layers.Dense(self.dense_units, activation="relu"),
                # float32 logits even under mixed precision: softmax/CE in float16 loses precision, and the
                # contract promises float32 output.
                layers.Dense(NUM_CLASSES, dtype="float32", name="logits"),
            ],
            name=self.name,
        )
        return compile_classifier(model, self.learning_rate)


def get_builder(spec: str | None = None) -> ModelBuilder:
    """The builder named by ``spec``.

    Args:
        spec: ``"cnn"`` (or ``None``) for :class:`ReferenceCNN`, or ``"package.module:factory"`` for a
            callable that returns a :class:`ModelBuilder`, so another model plugs in without editing mlcd.

    Raises:
        ValueError: the spec cannot be imported or does not give a builder.
    """
    if spec in (None, "", DEFAULT_MODEL, ReferenceCNN.name):
        return ReferenceCNN()
    assert spec is not None
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"unknown model {spec!r}: use 'cnn' or 'package.module:factory'")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot load model builder {spec!r}: {err}") from None
    # A class or a factory function is called; a ready builder instance is used as is.
    call = isinstance(factory, type) or (callable(factory) and not isinstance(factory, ModelBuilder))
    builder = factory() if call else factory
    if not isinstance(builder, ModelBuilder):
        raise ValueError(f"{spec!r} is not a model builder (needs name, build() and params())")
    return builder


def as_float32(model: keras.Model, builder: ModelBuilder) -> keras.Model:
    """The same weights in a model built under the float32 policy.

    A model trained with mixed precision is re-built in float32 before it is logged, so a CPU-only
    evaluator or gateway never runs float16 kernels it may lack.
    """
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        clone = builder.build()
    finally:
        keras.mixed_precision.set_global_policy(previous)
    clone.set_weights(model.get_weights())
    return clone
