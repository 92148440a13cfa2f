"""The ``register`` task of ``mlcd_retrain``: one call from the DAG, testable without Airflow."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from mlcd import __version__
from mlcd.registry.base import MAX_DETAILS_CHARS, compact_json
from mlcd.registry.client import ModelRegistry
from mlcd.registry.errors import GateRejected, StaleAliasError
from mlcd.registry.state import RolloutState
from mlcd.registry.tags import (
    TAG_CHAMPION_AT_EVAL,
    TAG_CODE_VERSION,
    TAG_DAG_RUN,
    TAG_DISCORDANT,
    TAG_FORCED,
    TAG_METRICS,
    TAG_P_VALUE,
    TAG_PAGE_URL,
    TAG_REASONS,
    TAG_SNAPSHOT,
    TAG_VERDICT,
)

log = logging.getLogger(__name__)

# Headline numbers kept on the version (the confusion matrix stays in the run's artifacts).
_HEADLINE = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "n")


def version_tags(train_result: dict[str, Any], evaluation: dict[str, Any], dag_run_id: str | None) -> dict[str, str]:
    """The tags that explain a version: verdict, reasons, metrics, p-value, snapshot, DAG run, code version."""
    chal = (evaluation.get("metrics") or {}).get("challenger") or {}
    snapshot = train_result.get("snapshot_id") or (
        Path(str(train_result["snapshot_path"])).name if train_result.get("snapshot_path") else None
    )
    tags = {
        TAG_VERDICT: str(evaluation.get("verdict", "unknown")),
        TAG_REASONS: compact_json(evaluation.get("reasons", []), MAX_DETAILS_CHARS),
        TAG_METRICS: compact_json({k: chal[k] for k in _HEADLINE if k in chal}),
        TAG_P_VALUE: "none" if evaluation.get("p_value") is None else f"{evaluation['p_value']:.6g}",
        TAG_DISCORDANT: f"b={evaluation.get('b')},c={evaluation.get('c')}",
        TAG_CHAMPION_AT_EVAL: str(evaluation.get("champion_version")),
        TAG_FORCED: str(bool(evaluation.get("forced", False))).lower(),
        TAG_SNAPSHOT: str(snapshot),
        TAG_CODE_VERSION: str(train_result.get("code_version") or f"mlcd {__version__}"),
    }
    if dag_run_id:
        tags[TAG_DAG_RUN] = dag_run_id
    return tags


def register_challenger(
    train_result: dict[str, Any],
    evaluation: dict[str, Any],
    *,
    tracking_uri: str,
    model_name: str,
    actor: str,
    dag_run_id: str | None,
) -> dict[str, Any]:
    """Register the trained model once and act on the gate's verdict.

    * verdict failed → the version is recorded ``rejected`` with the reasons and :class:`GateRejected` is
      raised (its message is the verdict; the champion is untouched);
    * no champion yet → the version becomes champion (bootstrap);
    * otherwise it stays ``registered`` for the canary task.

    Re-running after any failure converges: the same version is found again by the training run id.

    Args:
        train_result: the train task's XCom: ``run_id``, ``model_uri``, ``snapshot_path`` (optional
            ``snapshot_id``, ``code_version``).
        evaluation: the evaluate task's XCom (:func:`mlcd.evaluation.evaluate.evaluate_challenger`).
        actor: who or what asked (e.g. ``"airflow:mlcd_retrain"`` or the triggering user).

    Returns:
        ``{"version", "state", "champion_version", "verdict", "passed", "model_uri", "model_name"}``.

    Raises:
        GateRejected: the gate failed.
        StaleAliasError: the champion changed since the evaluation (re-run evaluate).
        RegistryUnavailableError: the MLflow server is down (retry).
    """
    registry = ModelRegistry(tracking_uri, model_name)
    tags = version_tags(train_result, evaluation, dag_run_id)
    version = registry.register_run_model(train_result["run_id"], train_result["model_uri"], tags)
    link_page(registry, version)
    record = registry.get_state(version)
    champion = registry.get_alias_version("champion")
    verdict = str(evaluation.get("summary") or evaluation.get("verdict"))

    if not evaluation.get("passed", False):
        registry.reject(version, list(evaluation.get("reasons") or [verdict]), actor, dag_run_id)
        raise GateRejected(version, verdict)

    if record.state is RolloutState.REJECTED:  # an earlier attempt of this run already rejected it
        raise GateRejected(version, record.tags.get(TAG_REASONS, verdict))

    evaluated_against = evaluation.get("champion_version")
    if record.state is RolloutState.REGISTERED:
        if champion is not None and champion != version and str(champion) != str(evaluated_against):
            raise StaleAliasError(
                f"the champion is version {champion} now but the challenger was evaluated against "
                f"{evaluated_against}: re-run evaluate"
            )
        if champion is None:
            record = registry.bootstrap_champion(
                version, actor, "first model: no champion to compare with; " + verdict, dag_run_id
            )
            champion = version
    log.info("%s version %s is %s (champion %s): %s", model_name, version, record.state.value, champion, verdict)
    return {
        "model_name": model_name,
        "version": version,
        "state": record.state.value,
        "champion_version": champion,
        "verdict": evaluation.get("verdict"),
        "passed": True,
        "model_uri": f"models:/{model_name}/{version}",
    }


# --- MLflow -> the operator's page -----------------------------------------------------------------------

PAGE_MARK = "mlcd page:"  # how a description written by link_page starts (one a person wrote is kept)


def page_base_url() -> str | None:
    """Where the operator's page is served: ``MLCD_PAGE_URL``, else the Airflow api-server's own base URL
    (``AIRFLOW__API__BASE_URL``, which ``make up`` sets) with ``/mlcd/``; None when neither is set."""
    explicit = os.environ.get("MLCD_PAGE_URL", "").strip()
    if explicit:
        return explicit if explicit.endswith("/") else explicit + "/"
    airflow = os.environ.get("AIRFLOW__API__BASE_URL", "").strip().rstrip("/")
    return f"{airflow}/mlcd/" if airflow else None


def link_page(registry: ModelRegistry, version: str, base: str | None = None) -> str | None:
    """Tag the version with its section of the operator's page and say so in its description, so MLflow's
    version page links to the rollout chart, the DAG runs and the verdicts (the page links back to MLflow).

    The description (rendered as Markdown by MLflow's UI, so the link is clickable) is only written when empty or
    written by mlcd before. Returns the URL, or None when no page URL is known (nothing is written).
    """
    base = base or page_base_url()
    if not base:
        return None
    url = f"{base}#v{version}"
    registry.set_version_tags(version, {TAG_PAGE_URL: url})
    current = registry.version_description(version)
    if not current or current.startswith(PAGE_MARK):
        registry.set_version_description(
            version, f"{PAGE_MARK} [rollout chart, verdicts and DAG runs of version {version}]({url})")
    return url


# --- skip what is unchanged ---------------------------------------------------------------------------------

# The params that change what training produces (the gate and rollout params do not).
TRAINING_PARAMS = ("epochs", "batch_size", "seed", "model", "max_train_samples")


def train_fingerprint(snapshot_id: str, params: dict[str, Any]) -> str:
    """A short digest of the snapshot and the training params (seeded training makes it the same model)."""
    import hashlib
    import json

    chosen = {k: params.get(k) for k in TRAINING_PARAMS}
    blob = json.dumps({"snapshot": snapshot_id, "params": chosen}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def trained_version(registry: ModelRegistry, fingerprint: str) -> Any | None:
    """The newest version trained from the same snapshot and params (its ``TAG_TRAIN_FINGERPRINT``), else ``None``.

    A registry that cannot be read raises (``RegistryError``): an outage is not taken for "nothing trained yet".
    """
    from mlcd.registry.tags import TAG_TRAIN_FINGERPRINT

    same = [v for v in registry.list_versions() if (v.tags or {}).get(TAG_TRAIN_FINGERPRINT) == fingerprint]
    return same[-1] if same else None


def tag_fingerprint(registry: ModelRegistry, version: str, fingerprint: str | None) -> None:
    """Record which snapshot and params produced ``version`` (so the same run is not trained twice)."""
    from mlcd.registry.tags import TAG_TRAIN_FINGERPRINT

    if fingerprint:
        registry.set_version_tags(str(version), {TAG_TRAIN_FINGERPRINT: fingerprint})
