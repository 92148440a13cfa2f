"""Task bodies of the mlcd DAGs: one call into the core library each, with core errors mapped to Airflow's.

A DAG file's ``@task`` calls exactly one function here, so the DAG stays wiring and the logic stays testable
without Airflow. Heavy imports (GX, TensorFlow, MLflow) happen inside the functions, never while parsing.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from airflow.sdk import Asset
from airflow.sdk.exceptions import AirflowSkipException

log = logging.getLogger(__name__)

# Emitted by the landing watcher when new batches arrive; mlcd_retrain is scheduled on it (or nightly).
LANDING_ASSET = Asset(name="mlcd_landing_zone", uri="mlcd://landing-zone")

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "mlcd",
    "retries": 2,
    "retry_exponential_backoff": True,
    # Every task has a bound; long ones (train, canary, watch) set their own in the DAG file.
    "execution_timeout": timedelta(minutes=30),
}
# The pool the train task runs in (created by `make up` / the demo, see mlcd.embedded.ensure_pools): one
# training at a time on the embedded default, the GPU nodes' capacity on a cluster.
TRAINING_POOL = "training"


def collect_step() -> list[dict[str, Any]]:
    """New batches in the landing zone (hashed, recorded as landed)."""
    from mlcd.data.intake import collect

    return collect()


def validate_step(pending: list[dict[str, Any]], *, run_id: str | None, allow_partial: bool) -> dict[str, Any]:
    """Judge new batches and snapshot everything accepted; a quarantine skips the rest of the run (a refusal)."""
    from mlcd.data.intake import NoTrainingDataError, QuarantinedBatchesError, validate

    try:
        report = validate(pending, run_id=run_id, allow_partial=allow_partial)
    except QuarantinedBatchesError as err:
        from mlcd.airflow.refusals import Refusal, refuse

        # A correct refusal (mlcd.airflow.refusals): skipped with the reasons, so training and everything after it
        # are skipped too; retrying could not change a verdict on the same bytes.
        refuse(Refusal.QUARANTINED, str(err))
    except NoTrainingDataError as err:
        raise AirflowSkipException(str(err)) from None
    return report.as_dict()


# Emitted when a version is registered for rollout: mlcd_guard starts watching the canary it becomes.
CANARY_ASSET = Asset(name="mlcd_canary", uri="mlcd://canary")
# Emitted by mlcd_drift_watch when live inputs drifted from the training data: mlcd_retrain retrains on it.
DRIFT_ASSET = Asset(name="mlcd_drift", uri="mlcd://drift")


def _mlflow() -> Any:
    """The MLflow connection (``mlflow_default`` Connection, else MLFLOW_TRACKING_URI), read at run time."""
    from mlcd.airflow.hooks import MlflowHook

    return MlflowHook().config


def evaluate_step(train_result: dict[str, Any], *, force: bool, gate: dict[str, Any] | None = None) -> dict[str, Any]:
    """Challenger vs champion on the frozen test set; the verdict is computed here and enforced by register."""
    from mlcd.evaluation.evaluate import evaluate_challenger
    from mlcd.settings import get_settings

    evaluation = evaluate_challenger(
        train_result, tracking_uri=_mlflow().tracking_uri, model_name=get_settings().model_name, force=force,
        config=gate or None,
    )
    log.info("gate verdict: %s", evaluation.get("summary") or evaluation.get("verdict"))
    for reason in evaluation.get("reasons", []):
        log.info("  - %s", reason)
    return evaluation


def register_step(
    train_result: dict[str, Any], evaluation: dict[str, Any], *, dag_id: str, run_id: str | None,
    fingerprint: str | None = None,
) -> dict[str, Any]:
    """Register the challenger once; a rejected verdict skips the rollout with the verdict as its message.

    ``fingerprint`` (the ``unchanged`` task's) is tagged on the version, rejected or not, so the next run on the
    same snapshot with the same params can stop before training.
    """
    from mlcd.registry import GateRejected
    from mlcd.registry.task import register_challenger
    from mlcd.settings import get_settings

    settings = get_settings()
    try:
        result = register_challenger(
            train_result,
            evaluation,
            tracking_uri=_mlflow().tracking_uri,
            model_name=settings.model_name,
            actor=f"airflow:{dag_id}",
            dag_run_id=run_id,
        )
    except GateRejected as err:
        _tag_fingerprint(settings.model_name, err.version, fingerprint)
        from mlcd.airflow.refusals import Refusal, refuse

        # A correct refusal: the champion is untouched and a retry would judge the same predictions the same way.
        refuse(Refusal.GATE_REJECTED, str(err))
    _tag_fingerprint(settings.model_name, result["version"], fingerprint)
    return result


# --- skip what is unchanged ---------------------------------------------------------------------------------

def _tag_fingerprint(model_name: str, version: str, fingerprint: str | None) -> None:
    from mlcd.airflow.hooks import MlflowHook
    from mlcd.registry.task import tag_fingerprint

    tag_fingerprint(MlflowHook().get_registry(model_name), version, fingerprint)


def unchanged_step(report: dict[str, Any], params: dict[str, Any], *, force: bool) -> dict[str, Any]:
    """Stop the run (skip: training and everything after it) when this snapshot was already trained with these
    params into a registered version; ``force_retrain`` trains anyway.

    Returns:
        ``{"fingerprint", "snapshot_id"}`` for the register task to tag the new version with.
    """
    from mlcd.airflow.hooks import MlflowHook
    from mlcd.registry.state import RolloutState
    from mlcd.registry.tags import TAG_STATE
    from mlcd.registry.task import train_fingerprint, trained_version

    snapshot_id = str(report.get("snapshot_id") or "")
    if not snapshot_id:
        return {"fingerprint": None, "snapshot_id": None}
    fingerprint = train_fingerprint(snapshot_id, params)
    out = {"fingerprint": fingerprint, "snapshot_id": snapshot_id}
    if force:
        log.info("force_retrain: training snapshot %s again", snapshot_id)
        return out
    v = trained_version(MlflowHook().get_registry(), fingerprint)
    if v is not None:
        state = (v.tags or {}).get(TAG_STATE, RolloutState.REGISTERED.value)
        raise AirflowSkipException(
            f"unchanged: snapshot {snapshot_id} with the same training params is already version {v.version} "
            f"({state}); nothing to train. Set force_retrain to train it again."
        )
    return out


def announce_canary_step(registered: dict[str, Any]) -> dict[str, Any]:
    """Succeed (so the ``mlcd_canary`` outlet starts ``mlcd_guard``) only for a version that will be a canary.

    A first model bootstrapped straight to champion has no stable version to be compared with: a guard run
    would only wait out its grace period.
    """
    from mlcd.registry.state import RolloutState

    state = registered.get("state")
    if state != RolloutState.REGISTERED.value:
        raise AirflowSkipException(
            f"version {registered.get('version')} is {state} (no canary to watch): mlcd_guard not started"
        )
    return {"version": registered.get("version")}
