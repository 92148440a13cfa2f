"""Deliberately broken model builders, for drills: rollback tests, the demo, and game days.

``BlindModel`` keeps the model contract (raw pixels in, 10 logits out) but multiplies its input by zero, so
training can only learn the class prior: it answers the same class for every image, the classic "model that
loads and serves but is useless" failure that error rates and latency cannot see. Select it with
``--model mlcd.training.faulty:BlindModel`` (or the ``model`` param of ``mlcd_retrain``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from mlcd.training.model import IMAGE_SHAPE, NUM_CLASSES, compile_classifier

if TYPE_CHECKING:
    import keras


@dataclass(frozen=True)
class BlindModel:
    name: str = "blind-model"
    learning_rate: float = 1e-2

    def params(self) -> dict[str, Any]:
        return {f"model.{k}": v for k, v in asdict(self).items()}

    def build(self) -> keras.Model:
        import keras
        from keras import layers

        model = keras.Sequential(
            [
                keras.Input(shape=IMAGE_SHAPE, dtype="float32", name="pixels"),
                layers.Rescaling(0.0),  # the fault: the model never sees the image
                layers.Flatten(),
                layers.Dense(NUM_CLASSES, dtype="float32", name="logits"),
            ],
            name=self.name,
        )
        return compile_classifier(model, self.learning_rate)
