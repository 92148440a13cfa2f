"""The trainer's command line and its result: the one contract the local and Kubernetes backends share.

Both backends run ``python -m mlcd.training <trainer_args(...)>``; this module builds those arguments and
reads the result back from the trainer's output. It imports neither TensorFlow nor MLflow, so Airflow can
import it while parsing DAGs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

ENTRYPOINT_MODULE = "mlcd.training"
# The result is the last stdout line with this prefix; the prefix lets a reader find it among progress
# lines and library noise, and the rest of the line is plain JSON.
RESULT_PREFIX = "MLCD_TRAIN_RESULT "
# The trainer's one-line reason for a failure starts with this on stderr (and is its last line).
ERROR_PREFIX = "mlcd.training: error: "
# Inside a KubernetesPodOperator pod the xcom sidecar reads this file.
XCOM_RETURN_PATH = "/airflow/xcom/return.json"

# Keys evaluation and registration read from the ``train`` task's XCom.
REQUIRED_RESULT_KEYS = (
    "run_id",
    "model_uri",
    "experiment_id",
    "snapshot_id",
    "snapshot_path",
    "val_accuracy",
    "val_loss",
    "epochs_run",
    "tracking_uri",
)


@dataclass(frozen=True)
class TrainResult:
    """What one training run produced; ``to_dict()`` is the ``train`` task's XCom."""

    run_id: str
    model_uri: str  # runs:/<run_id>/model
    experiment_id: str
    experiment_name: str
    snapshot_id: str
    snapshot_path: str
    val_accuracy: float
    val_loss: float
    epochs_run: int
    best_epoch: int
    tracking_uri: str
    train_samples: int
    val_samples: int
    train_seconds: float
    code_version: str
    model_name: str
    logged_model_id: str | None = None
    run_url: str | None = None  # the run in the MLflow UI, for people reading the task log
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def trainer_args(
    snapshot: str,
    *,
    epochs: int | str = 3,
    batch_size: int | str = 128,
    experiment: str | None = None,
    dag_run_id: str | None = None,
    seed: int | str = 0,
    max_train_samples: int | str | None = None,
    tracking_uri: str | None = None,
    model: str | None = None,
) -> list[str]:
    """The trainer's flags, in a fixed order.

    Values may be Jinja templates (``"{{ params.epochs }}"``): the operators render them. The MLflow URI is
    normally left out and passed as ``MLFLOW_TRACKING_URI`` in the environment, so the command is the same
    on every backend and holds no server address.

    Returns:
        The flags after ``python -m mlcd.training``.
    """
    args = ["--snapshot", str(snapshot), "--epochs", str(epochs), "--batch-size", str(batch_size), "--seed", str(seed)]
    if experiment:
        args += ["--experiment", str(experiment)]
    if dag_run_id:
        args += ["--dag-run-id", str(dag_run_id)]
    if max_train_samples not in (None, ""):
        args += ["--max-train-samples", str(max_train_samples)]
    if tracking_uri:
        args += ["--tracking-uri", str(tracking_uri)]
    if model:
        args += ["--model", str(model)]
    return args


def trainer_command(python: str, args: list[str]) -> list[str]:
    """``[python, "-m", "mlcd.training", *args]``: the whole command a backend runs."""
    return [python, "-m", ENTRYPOINT_MODULE, *args]


def format_result_line(result: dict[str, Any]) -> str:
    """The one stdout line that carries the result."""
    return RESULT_PREFIX + json.dumps(result, sort_keys=True)


def parse_result(lines: Iterable[str]) -> dict[str, Any]:
    """The result dict from the trainer's output (the last line with :data:`RESULT_PREFIX`).

    Raises:
        ValueError: no result line, unreadable JSON, or required keys missing.
    """
    found: str | None = None
    for line in lines:
        line = line.rstrip("\r\n")
        if line.startswith(RESULT_PREFIX):
            found = line[len(RESULT_PREFIX) :]
    if found is None:
        raise ValueError(f"the trainer printed no result line (expected one starting with {RESULT_PREFIX.strip()!r})")
    try:
        result = json.loads(found)
    except ValueError as err:
        raise ValueError(f"the trainer's result line is not JSON: {err}") from None
    if not isinstance(result, dict):
        raise ValueError("the trainer's result line is not a JSON object")
    missing = [k for k in REQUIRED_RESULT_KEYS if k not in result]
    if missing:
        raise ValueError(f"the trainer's result lacks {', '.join(missing)}")
    return result


def last_error_line(lines: Iterable[str]) -> str | None:
    """The trainer's own error line if it printed one, else the last non-empty line, else ``None``."""
    last_error: str | None = None
    last_line: str | None = None
    for line in lines:
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        last_line = line
        if line.startswith(ERROR_PREFIX):
            last_error = line[len(ERROR_PREFIX) :]
    return last_error if last_error is not None else last_line
