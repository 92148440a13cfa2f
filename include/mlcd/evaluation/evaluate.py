"""The ``evaluate`` task of ``mlcd_retrain``: challenger and champion on the same frozen test set.

Loads both models with the model contract's loader, predicts the snapshot's test split (and any golden
sets), judges with :func:`mlcd.evaluation.gate.judge`, logs metrics, the confusion matrix and the verdict
to the challenger's MLflow run, and returns a JSON-safe dict for XCom.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlcd.evaluation.gate import GateConfig, GateVerdict, judge

if TYPE_CHECKING:
    from mlcd.registry.client import ModelRegistry

log = logging.getLogger(__name__)

GoldenSets = Mapping[str, str | Path] | Iterable[str | Path]


def _golden_items(golden_sets: GoldenSets) -> list[tuple[str, Path]]:
    if isinstance(golden_sets, Mapping):
        return [(str(k), Path(v)) for k, v in golden_sets.items()]
    return [(Path(p).stem, Path(p)) for p in golden_sets]


def _load_golden(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A golden set: an ``.npz`` with ``x`` (N×28×28) and ``y``, checked like any batch."""
    from mlcd.data.batch import load_batch

    batch = load_batch(path)
    return batch.x, batch.y.astype(np.int64)


def _confusion_text(cm: list[list[int]]) -> str:
    head = "true\\pred " + " ".join(f"{k:>6d}" for k in range(len(cm)))
    rows = [f"{i:>9d} " + " ".join(f"{v:>6d}" for v in row) for i, row in enumerate(cm)]
    return "\n".join([head, *rows]) + "\n"


def _log_to_run(registry: ModelRegistry, run_id: str, result: dict[str, Any]) -> None:
    """Metrics (``eval_*``) and artifacts (``evaluation/*``) on the challenger's run; re-logging is harmless."""
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    chal = result["metrics"]["challenger"]
    values: dict[str, float] = {
        "eval_accuracy": chal["accuracy"],
        "eval_precision_macro": chal["precision_macro"],
        "eval_recall_macro": chal["recall_macro"],
        "eval_f1_macro": chal["f1_macro"],
        "eval_gate_passed": float(result["passed"]),
    }
    for k, r in enumerate(chal["per_class_recall"]):
        if r is not None:
            values[f"eval_recall_class_{k}"] = r
    champ = result["metrics"].get("champion")
    if champ:
        values["eval_champion_accuracy"] = champ["accuracy"]
        values["eval_champion_f1_macro"] = champ["f1_macro"]
    if result["p_value"] is not None:
        values["eval_mcnemar_p"] = result["p_value"]
        values["eval_discordant_b"] = float(result["b"])
        values["eval_discordant_c"] = float(result["c"])
    for name, g in result["golden"].items():
        values[f"eval_golden_{name}_accuracy"] = g["accuracy"]
    client = registry.client
    registry._call(
        "logging evaluation metrics",
        client.log_batch,
        run_id,
        metrics=[Metric(k, float(v), ts, 0) for k, v in values.items()],
    )
    registry._call("logging the verdict", client.log_dict, run_id, result, "evaluation/verdict.json")
    registry._call(
        "logging the confusion matrix",
        client.log_text,
        run_id,
        _confusion_text(chal["confusion_matrix"]),
        "evaluation/confusion_matrix.txt",
    )


def evaluate_challenger(
    train_result: dict[str, Any],
    *,
    tracking_uri: str,
    model_name: str,
    golden_sets: GoldenSets = (),
    force: bool = False,
    config: GateConfig | Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate the trained challenger against the current champion and return the gate's verdict.

    Args:
        train_result: the train task's XCom: ``run_id``, ``model_uri`` and ``snapshot_path`` (the snapshot
            folder whose ``test`` split is the frozen test set).
        tracking_uri: the MLflow server.
        model_name: the registered model whose ``champion`` alias is the opponent.
        golden_sets: fixed extra sets (``.npz`` with ``x``, ``y``), as paths or ``{name: path}``; each is
            judged like the test set and a failure on any fails the gate.
        force: manual override (the trigger form's ``force`` param): the verdict passes, recorded as forced.
        config: a :class:`GateConfig` or a dict of its fields (from DAG params).

    Returns:
        ``{"passed", "verdict" ("pass"|"fail"|"forced"), "summary", "reasons", "metrics": {"challenger",
        "champion"}, "p_value", "p_value_exact", "p_value_mid", "b", "c", "checks", "first_model", "forced",
        "gate_passed", "champion_version", "champion_model_uri", "challenger_model_uri", "run_id",
        "snapshot_path", "n_test", "golden", "config"}`` — JSON types only.

    Raises:
        ArtifactIntegrityError: the challenger's or the champion's artifact is not the one its training run
            sealed (see :func:`mlcd.model_io.load_predictor`): nothing is judged, the task fails with that line.
    """
    from mlcd.data.snapshot import load_split
    from mlcd.model_io import load_predictor
    from mlcd.registry.client import ModelRegistry

    cfg = config if isinstance(config, GateConfig) else GateConfig.from_dict(dict(config or {}))
    run_id = str(train_result["run_id"])
    snapshot_path = str(train_result["snapshot_path"])
    x, y = load_split(snapshot_path, "test")
    if len(y) == 0:
        raise ValueError(f"the snapshot {snapshot_path} has an empty test split: nothing to evaluate on")

    registry = ModelRegistry(tracking_uri, model_name)
    champion_version = registry.get_alias_version("champion")
    champion_uri: str | None = None
    note: str | None = None
    if champion_version is not None:
        if registry.get_version_info(champion_version)["run_id"] == run_id:
            # A re-run after this very model was made champion: comparing it with itself proves nothing.
            note = f"this training run is already champion (version {champion_version}): judged by the floor alone"
        else:
            # Pin the version, not the alias, so both predictions come from the model the verdict names.
            champion_uri = f"models:/{model_name}/{champion_version}"

    challenger = load_predictor(str(train_result["model_uri"]), tracking_uri)
    champion = load_predictor(champion_uri, tracking_uri) if champion_uri else None

    verdict = judge(
        challenger.predict_classes(x), champion.predict_classes(x) if champion else None, y, cfg, force=force
    )
    result = verdict.to_dict()
    if note:
        result["reasons"].append(note)

    golden: dict[str, Any] = {}
    golden_failures: list[str] = []
    for name, path in _golden_items(golden_sets):
        gx, gy = _load_golden(path)
        g: GateVerdict = judge(
            challenger.predict_classes(gx), champion.predict_classes(gx) if champion else None, gy, cfg
        )
        golden[name] = {
            "passed": g.gate_passed,
            "accuracy": g.metrics["challenger"]["accuracy"],
            "champion_accuracy": (g.metrics["champion"] or {}).get("accuracy"),
            "p_value": g.p_value,
            "reasons": g.reasons,
        }
        if not g.gate_passed:
            golden_failures.extend(f"golden set {name}: {r}" for r in g.reasons)
    if golden_failures:
        result["gate_passed"] = False
        result["passed"] = bool(force)
        result["verdict"] = "forced" if force else "fail"
        kept = [r for r in result["reasons"] if r.startswith("forced")] if force else []
        failed_main = [c["detail"] for c in result["checks"] if not c["passed"]]
        result["reasons"] = kept + failed_main + golden_failures
    result["summary"] = f"gate {result['verdict'].upper()}: " + "; ".join(result["reasons"])

    result.update(
        champion_version=champion_version,
        champion_model_uri=champion_uri,
        challenger_model_uri=str(train_result["model_uri"]),
        run_id=run_id,
        snapshot_path=snapshot_path,
        snapshot_id=train_result.get("snapshot_id") or Path(snapshot_path).name,
        n_test=int(len(y)),
        golden=golden,
        config=cfg.to_dict(),
    )
    _log_to_run(registry, run_id, result)
    log.info("%s", result["summary"])
    return result
