"""``python -m mlcd.training``: the one trainer entrypoint, run as a local child process or in a GPU pod.

stdout: one line per epoch, then the result as the last line (``MLCD_TRAIN_RESULT {json}``); inside a pod
the result is also written to ``/airflow/xcom/return.json`` for KubernetesPodOperator's xcom sidecar.
stderr: on failure, the last line is ``mlcd.training: error: <one-line reason>`` and the exit code is 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from mlcd.training.contract import ERROR_PREFIX, XCOM_RETURN_PATH, format_result_line


def _optional_int(text: str) -> int | None:
    """An int, or ``None`` for an empty value (a template whose Param was not set renders as "")."""
    return None if text.strip() in ("", "None", "none") else int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mlcd.training", description="Train on a snapshot, log to MLflow.")
    parser.add_argument("--snapshot", required=True, help="snapshot folder or URL (train.npz, val.npz, manifest.json)")
    parser.add_argument("--epochs", type=int, default=3, help="most epochs (early stopping may stop sooner)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size per replica")
    parser.add_argument("--tracking-uri", default=None, help="MLflow server (default: MLFLOW_TRACKING_URI)")
    parser.add_argument("--experiment", default=None, help="MLflow experiment (default: the model name)")
    parser.add_argument("--dag-run-id", default=None, help="Airflow DAG run id, recorded as a run tag")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-train-samples", type=_optional_int, default=None, help="cap on training images")
    parser.add_argument("--model", default=None, 
                        help="'cnn' (default), 'mlcd.training.faulty:BlindModel' or an 'mlcd.models' entry point")
    parser.add_argument("--patience", type=int, default=2, help="early-stopping patience in epochs")
    return parser


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 500 else text[:497] + "..."


def _expected(err: BaseException) -> bool:
    """Failures a person can act on from one line: bad input, an unreachable or refusing MLflow server."""
    from mlcd.training.data import SnapshotError

    if isinstance(err, (SnapshotError, ValueError, OSError)):
        return True
    return type(err).__module__.startswith(("mlflow", "requests", "urllib3"))


def write_xcom(payload: dict[str, object], path: str | None = None) -> Path | None:
    """Write the result where KubernetesPodOperator's sidecar reads it, when that folder exists."""
    target = Path(path or os.environ.get("MLCD_XCOM_PATH", XCOM_RETURN_PATH))
    if not target.parent.is_dir():
        return None
    target.write_text(json.dumps(payload))
    return target


def main(argv: list[str] | None = None) -> int:
    """Run the trainer; returns the process exit code."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    from mlcd.training import seal_result
    from mlcd.training.trainer import train

    try:
        result = train(
            args.snapshot,
            epochs=args.epochs,
            batch_size=args.batch_size,
            tracking_uri=args.tracking_uri,
            experiment=args.experiment,
            dag_run_id=args.dag_run_id,
            seed=args.seed,
            max_train_samples=args.max_train_samples,
            model=args.model,
            patience=args.patience,
        )
        seal_result(result)
    except KeyboardInterrupt:
        print(ERROR_PREFIX + "interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as err:  # noqa: BLE001 - the process boundary: every failure becomes one readable line
        if not _expected(err):
            traceback.print_exc()  # a bug: keep the traceback for whoever fixes it, the last line stays readable
        sys.stdout.flush()
        print(ERROR_PREFIX + _one_line(err), file=sys.stderr, flush=True)
        return 1
    payload = result.to_dict()
    write_xcom(payload)
    print(format_result_line(payload), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
