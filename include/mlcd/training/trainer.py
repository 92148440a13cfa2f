"""Train a model on a snapshot and record everything in MLflow: the body of ``python -m mlcd.training``.

One function, :func:`train`, used by the entrypoint (pods and local child processes), ``mlcd train`` and tests.
TensorFlow and MLflow are imported only after the snapshot has been read and checked, so a bad snapshot
fails in a second, not after a 5-second import.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlcd.settings import get_settings
from mlcd.training.contract import TrainResult
from mlcd.training.data import TrainingData, load_training_data, make_dataset
from mlcd.training.model import ModelBuilder, as_float32, get_builder
from mlcd.training.tracking import (
    code_version,
    confusion_figure,
    confusion_matrix,
    epoch_metrics,
    log_snapshot_inputs,
    per_class_metric_dict,
    per_class_metrics,
)

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

Progress = Callable[[str], None]


def _print_progress(line: str) -> None:
    # flush per line: the Airflow task log and `kubectl logs` show progress live only if it leaves the buffer.
    print(line, flush=True)


def select_strategy() -> tuple[tf.distribute.Strategy, bool]:
    """``(MirroredStrategy, True)`` when GPUs are visible (mixed precision on), else the default strategy."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return tf.distribute.MirroredStrategy(), True
    return tf.distribute.get_strategy(), False


def fit(
    net: keras.Model,
    data: TrainingData,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    callbacks: list[keras.callbacks.Callback] | None = None,
    accelerated: bool = False,
) -> tuple[keras.callbacks.History, tf.data.Dataset]:
    """Fit a compiled model on a snapshot's train split, validating on its val split every epoch.

    The one fit path of the trainer, also what bench/training.py measures against ``model.fit`` on arrays:
    uint8 pipelines from :func:`make_dataset` (``accelerated``: the GPU settings). Keras' default of one
    step per call is kept: 16 steps per call traces a multi-step loop that cost more than it saved on the
    benchmark's fits (bench/RESULTS.md), and callbacks keep their per-batch hooks.

    Returns:
        Keras' history and the validation pipeline (reused for the final evaluation).
    """
    train_ds = make_dataset(data.x_train, data.y_train, batch_size, shuffle=True, seed=seed, accelerated=accelerated)
    val_ds = make_dataset(data.x_val, data.y_val, batch_size, shuffle=False, accelerated=accelerated)
    # shuffle=False: the pipeline shuffles itself (seeded); Keras would ignore True for a dataset and warn.
    history = net.fit(
        train_ds, validation_data=val_ds, epochs=epochs, callbacks=callbacks or [], shuffle=False, verbose=0
    )
    return history, val_ds


def _make_progress_callback(
    epochs: int, train_samples: int, progress: Progress, log_to_mlflow: bool
) -> keras.callbacks.Callback:
    import keras

    class EpochProgress(keras.callbacks.Callback):
        """One readable line per epoch, and the epoch's metrics in MLflow (step = epoch number)."""

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            seconds = time.perf_counter() - self._start
            metrics = epoch_metrics(logs or {})
            metrics["samples_per_second"] = train_samples / seconds if seconds > 0 else 0.0
            metrics["epoch_seconds"] = seconds
            shown = "  ".join(
                f"{k}={metrics[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in metrics
            )
            progress(
                f"epoch {epoch + 1}/{epochs}  {shown}  {metrics['samples_per_second']:,.0f} samples/s  {seconds:.1f}s"
            )
            if log_to_mlflow:
                import mlflow

                mlflow.log_metrics(metrics, step=epoch + 1)

    return EpochProgress()


def _logits(model: keras.Model, ds: tf.data.Dataset) -> np.ndarray:
    # Calling the model per batch avoids predict()'s extra tf.function trace for a one-off pass.
    return np.concatenate([np.asarray(model(xb, training=False), dtype=np.float32) for xb, _ in ds])


def _sparse_ce(logits: np.ndarray, y: np.ndarray) -> float:
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(y)), y].mean())


def _run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return None


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
    patience: int = 2,
    progress: Progress = _print_progress,
) -> TrainResult:
    """Train on a snapshot's train split, validate on its val split, log the run and the model to MLflow.

    Args:
        snapshot_dir: snapshot folder or URL (see :mod:`mlcd.training.data`).
        epochs: upper bound; early stopping on validation loss may stop sooner.
        batch_size: per replica; the global batch is this times the number of GPUs.
        tracking_uri: MLflow server; default ``MLFLOW_TRACKING_URI`` / settings.
        experiment: MLflow experiment; default the registered model name.
        dag_run_id: the Airflow DAG run this training belongs to (tag ``mlcd.dag_run_id``).
        seed: seeds Python, NumPy, TensorFlow and the shuffle order.
        max_train_samples: cap on training images (quick runs, tests).
        model: ``"cnn"``, ``"package.module:factory"`` or a builder instance.
        patience: epochs without a val-loss improvement before stopping.
        progress: where per-epoch lines go.

    Returns:
        The run's :class:`TrainResult`.

    Raises:
        SnapshotError: the snapshot cannot be used. ValueError: bad arguments.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    settings = get_settings()
    tracking_uri = tracking_uri or settings.tracking_uri
    experiment = experiment or settings.model_name
    builder = model if isinstance(model, ModelBuilder) else get_builder(model)
    data: TrainingData = load_training_data(snapshot_dir, max_train_samples=max_train_samples, seed=seed)
    progress(
        f"snapshot {data.snapshot_id}: {len(data.x_train)} train / {len(data.x_val)} val images; "
        f"model {builder.name}; MLflow {tracking_uri} experiment {experiment!r}"
    )

    import keras
    import mlflow
    import mlflow.tensorflow
    import tensorflow as tf
    from mlflow.models import infer_signature

    keras.utils.set_random_seed(seed)
    strategy, mixed_precision = select_strategy()
    if mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    replicas = int(strategy.num_replicas_in_sync)
    global_batch = batch_size * replicas
    with strategy.scope():
        net = builder.build()

    mlflow.set_tracking_uri(tracking_uri)
    exp = mlflow.set_experiment(experiment)
    version = code_version()
    tags = {
        "mlcd.snapshot_id": data.snapshot_id,
        "mlcd.snapshot_path": data.snapshot_path,
        "mlcd.code_version": version,
        "mlcd.dag_run_id": dag_run_id or "",
        "mlcd.model": builder.name,
        "mlcd.trigger": "airflow" if dag_run_id else "manual",
    }
    with mlflow.start_run(experiment_id=exp.experiment_id, run_name=f"{builder.name}@{data.snapshot_id}", tags=tags) as run:
        run_id = run.info.run_id
        progress(f"MLflow run {run_id}: {_run_url(tracking_uri, exp.experiment_id, run_id) or tracking_uri}")
        mlflow.log_params(
            {
                "epochs": epochs,
                "batch_size": batch_size,
                "global_batch_size": global_batch,
                "seed": seed,
                "max_train_samples": max_train_samples if max_train_samples is not None else "",
                "patience": patience,
                "train_samples": len(data.x_train),
                "val_samples": len(data.x_val),
                "snapshot_id": data.snapshot_id,
                "strategy": type(strategy).__name__,
                "replicas": replicas,
                "mixed_precision": mixed_precision,
                "tensorflow_version": tf.__version__,
                "keras_version": keras.__version__,
                **builder.params(),
            }
        )
        log_snapshot_inputs(
            data.snapshot_id,
            data.snapshot_path,
            {"training": (data.x_train, data.y_train), "validation": (data.x_val, data.y_val)},
        )
        callbacks = [
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True),
            _make_progress_callback(epochs, len(data.x_train), progress, log_to_mlflow=True),
        ]
        started = time.perf_counter()
        history, val_ds = fit(
            net, data, epochs=epochs, batch_size=global_batch, seed=seed, callbacks=callbacks, accelerated=mixed_precision
        )
        train_seconds = time.perf_counter() - started
        val_losses = [float(v) for v in history.history.get("val_loss", [])]
        epochs_run = len(history.history.get("loss", []))
        best_epoch = int(np.argmin(val_losses)) + 1 if val_losses else epochs_run

        if mixed_precision:
            net = as_float32(net, builder)
        logits = _logits(net, val_ds)
        predicted = logits.argmax(axis=1)
        val_loss = _sparse_ce(logits, data.y_val)
        val_accuracy = float((predicted == data.y_val).mean())
        if not math.isfinite(val_loss):
            raise RuntimeError(f"training diverged: validation loss is {val_loss}")
        cm = confusion_matrix(data.y_val, predicted)
        per_class = per_class_metrics(cm)

        example = data.x_val[:5].astype(np.float32)
        signature = infer_signature(example, logits[:5])
        progress("logging the model to MLflow")
        info = mlflow.tensorflow.log_model(
            net,
            name="model",
            signature=signature,
            input_example=example,
            # Explicit requirements: inferring them re-loads the model in a subprocess (seconds, for nothing).
            pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"],
            tags={"mlcd.snapshot_id": data.snapshot_id, "mlcd.code_version": version},
        )
        model_id = getattr(info, "model_id", None)
        # Logged after the model and linked to it by id: logged before, log_model links them itself with one
        # metric-history request per metric name (40 round trips for the per-class metrics).
        mlflow.log_metrics(
            {
                "final_val_loss": val_loss,
                "final_val_accuracy": val_accuracy,
                "best_epoch": best_epoch,
                "epochs_run": epochs_run,
                "train_seconds": train_seconds,
                **per_class_metric_dict(per_class),
            },
            model_id=model_id,
        )
        mlflow.log_figure(confusion_figure(cm, f"validation, snapshot {data.snapshot_id}"), "confusion_matrix.png")
        mlflow.log_dict(
            {"confusion_matrix": cm.tolist(), "per_class": {str(k): v for k, v in per_class.items()}},
            "per_class_metrics.json",
        )

    return TrainResult(
        run_id=run_id,
        model_uri=f"runs:/{run_id}/model",
        experiment_id=str(exp.experiment_id),
        experiment_name=experiment,
        snapshot_id=data.snapshot_id,
        snapshot_path=data.snapshot_path,
        val_accuracy=val_accuracy,
        val_loss=val_loss,
        epochs_run=epochs_run,
        best_epoch=best_epoch,
        tracking_uri=tracking_uri,
        train_samples=len(data.x_train),
        val_samples=len(data.x_val),
        train_seconds=round(train_seconds, 3),
        code_version=version,
        model_name=builder.name,
        logged_model_id=model_id,
        run_url=_run_url(tracking_uri, str(exp.experiment_id), run_id),
        extra={"mixed_precision": mixed_precision, "replicas": replicas},
    )
