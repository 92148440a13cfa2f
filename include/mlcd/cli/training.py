"""``mlcd train``: run the trainer entrypoint in this process, exactly as the Airflow task runs it."""

from __future__ import annotations

import sys

import click


@click.command("train")
@click.option("--snapshot", required=True, help="Snapshot folder or URL (train.npz, val.npz, manifest.json).")
@click.option("--epochs", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--tracking-uri", default=None, help="MLflow server [default: MLFLOW_TRACKING_URI or settings].")
@click.option("--experiment", default=None, help="MLflow experiment [default: the model name].")
@click.option("--dag-run-id", default=None, help="Record the run as part of this Airflow DAG run.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-train-samples", type=click.IntRange(min=1), default=None, help="Cap on training images.")
@click.option("--model", default=None, help="'cnn' (default), 'mlcd.training.faulty:BlindModel' or an 'mlcd.models' entry point.")
def train_command(
    snapshot: str,
    epochs: int,
    batch_size: int,
    tracking_uri: str | None,
    experiment: str | None,
    dag_run_id: str | None,
    seed: int,
    max_train_samples: int | None,
    model: str | None,
) -> None:
    """Train on a snapshot and log the run and the model to MLflow; prints the result as the last line."""
    from mlcd.training.__main__ import main
    from mlcd.training.contract import trainer_args

    # The same flags, through the same builder and parser, as `python -m mlcd.training` in a pod.
    args = trainer_args(
        snapshot,
        epochs=epochs,
        batch_size=batch_size,
        experiment=experiment,
        dag_run_id=dag_run_id,
        seed=seed,
        max_train_samples=max_train_samples,
        tracking_uri=tracking_uri,
        model=model,
    )
    sys.exit(main(args))


def register(group: click.Group) -> None:
    group.add_command(train_command)
