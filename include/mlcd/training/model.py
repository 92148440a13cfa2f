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
# Installed packages add models by declaring ``[project.entry-points."mlcd.models"] name = "module:attr"``.
ENTRY_POINT_GROUP = "mlcd.models"
_REFERENCE = "mlcd.training.model:ReferenceCNN"
BUILTIN_BUILDERS: dict[str, str] = {
    DEFAULT_MODEL: _REFERENCE,
    _REFERENCE: _REFERENCE,
    "mlcd.training.faulty:BlindModel": "mlcd.training.faulty:BlindModel",
}


@runtime_checkable
class ModelBuilder(Protocol):
    """What the trainer needs from a model: a name, its hyper-parameters, and a compiled model."""

    @property
    def name(self) -> str:
        """Short and stable: it names the run's model and its logged parameters."""
        ...

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


def allowed_builders() -> dict[str, str]:
    """Every model a training run may build: name or spec → ``module:attr``.

    The built-ins (the reference CNN and the drill model the demo breaks on purpose) plus the entry points
    that installed packages declare in group :data:`ENTRY_POINT_GROUP`; an entry point is reachable by its
    name and by its ``module:attr`` value. The ``model`` DAG param is user input: only what a deployment
    installed may run in the training process.
    """
    from importlib.metadata import entry_points

    allowed = dict(BUILTIN_BUILDERS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        allowed.setdefault(ep.name, ep.value)
        allowed.setdefault(ep.value, ep.value)
    return allowed


def get_builder(spec: str | None = None) -> ModelBuilder:
    """The builder named by ``spec``, if it is on the allow-list (:func:`allowed_builders`).

    Args:
        spec: ``"cnn"`` (or ``None``) for :class:`ReferenceCNN`, ``"mlcd.training.faulty:BlindModel"``, or
            the name or ``module:attr`` of an entry point in group ``mlcd.models``; the attribute is a
            builder, or a class or factory returning one.

    Raises:
        ValueError: the spec is not allowed (refused before anything is imported), cannot be imported, or
            does not give a builder.
    """
    if spec in (None, "", DEFAULT_MODEL, ReferenceCNN.name):
        return ReferenceCNN()
    assert spec is not None
    allowed = allowed_builders()
    target = allowed.get(spec.strip())
    if target is None:
        others = sorted(k for k in allowed if k != DEFAULT_MODEL)
        raise ValueError(
            f"model {spec!r} is not allowed: use 'cnn', {', '.join(map(repr, others))}, or install a builder as an "
            f"entry point in group {ENTRY_POINT_GROUP!r}"
        )
    if target == _REFERENCE:
        return ReferenceCNN()
    module_name, _, attr = target.partition(":")
    try:
        factory: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            factory = getattr(factory, part)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot load model builder {spec!r} ({target}): {err}") from None
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
