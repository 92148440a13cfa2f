"""Training: the trainer entrypoint (``python -m mlcd.training``), model builders and MLflow tracking.

Importing this package is light (no TensorFlow, no MLflow): Airflow glue imports the command contract from
here while parsing DAGs. :func:`train` imports the heavy libraries when called.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlcd.training.contract import (
    ERROR_PREFIX,
    REQUIRED_RESULT_KEYS,
    RESULT_PREFIX,
    TrainResult,
    parse_result,
    trainer_args,
    trainer_command,
)

if TYPE_CHECKING:
    from mlcd.training.model import ModelBuilder

__all__ = [
    "ERROR_PREFIX",
    "REQUIRED_RESULT_KEYS",
    "RESULT_PREFIX",
    "TrainResult",
    "parse_result",
    "seal_result",
    "train",
    "trainer_args",
    "trainer_command",
]


def train(
    snapshot_dir: str | Path,
    epochs: int = 3,
    batch_size: int = 128,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    dag_run_id: str | None = None,
    seed: int = 0,
    max_train_samples: int | None = None,
    model: str | ModelBuilder | None = None,
    **kwargs: Any,
) -> TrainResult:
    """Train and log to MLflow; see :func:`mlcd.training.trainer.train`."""
    from mlcd.training.trainer import train as _train

    return seal_result(_train(
        snapshot_dir,
        epochs=epochs,
        batch_size=batch_size,
        tracking_uri=tracking_uri,
        experiment=experiment,
        dag_run_id=dag_run_id,
        seed=seed,
        max_train_samples=max_train_samples,
        model=model,
        **kwargs,
    ))


def seal_result(result: TrainResult) -> TrainResult:
    """Record the digest (and signature) of the model the run just logged; also kept in ``result.extra``.

    Every trainer entrypoint calls this right after training, before anything can register the model.
    """
    from mlcd.training.tracking import seal_model

    tags = seal_model(result.model_uri, result.tracking_uri)
    result.extra.update(tags)
    return result
