"""Skip what is unchanged, against the real MLflow server: a snapshot already trained with the same params ends
the run before training (unless ``force_retrain``); a bootstrapped first champion does not start a guard run."""

from __future__ import annotations

from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowSkipException

from mlcd.airflow.steps import announce_canary_step, unchanged_step
from mlcd.registry.tags import TAG_TRAIN_FINGERPRINT
from mlcd.registry.task import train_fingerprint

pytestmark = pytest.mark.integration

PARAMS = {"epochs": 3, "batch_size": 128, "seed": 0, "model": "cnn", "max_train_samples": None, "gate": {}}


def test_fingerprint_depends_on_snapshot_and_training_params_only() -> None:
    fp = train_fingerprint("snap-a", PARAMS)
    assert fp == train_fingerprint("snap-a", {**PARAMS, "gate": {"accuracy_floor": 0.99}, "skip_canary": True})
    assert fp != train_fingerprint("snap-b", PARAMS)
    assert fp != train_fingerprint("snap-a", {**PARAMS, "seed": 1})
    assert fp != train_fingerprint("snap-a", {**PARAMS, "epochs": 4})


def test_unchanged_snapshot_and_params_end_the_run_unless_forced(tracking_uri: str, reference_data: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    from tests.modelkit import logged_models, register

    model = "skip-test-mnist"
    monkeypatch.setenv("MLCD_MODEL_NAME", model)
    report = {"snapshot_id": "snap-0123456789ab"}
    # No version of this model yet: train.
    first = unchanged_step(report, PARAMS, force=False)
    assert first == {"fingerprint": train_fingerprint("snap-0123456789ab", PARAMS), "snapshot_id": "snap-0123456789ab"}

    uris = logged_models(tracking_uri, reference_data.x_train[:2000], reference_data.y_train[:2000])
    version = register(tracking_uri, model, uris["healthy_a"])
    MlflowClient(tracking_uri).set_model_version_tag(model, version, TAG_TRAIN_FINGERPRINT, first["fingerprint"])

    with pytest.raises(AirflowSkipException) as skip:
        unchanged_step(report, PARAMS, force=False)
    assert f"already version {version}" in str(skip.value) and "force_retrain" in str(skip.value)
    assert unchanged_step(report, PARAMS, force=True) == first  # forced: trains again
    assert unchanged_step(report, {**PARAMS, "seed": 7}, force=False)["fingerprint"] != first["fingerprint"]
    assert unchanged_step({"snapshot_id": "snap-new"}, PARAMS, force=False)["snapshot_id"] == "snap-new"


def test_only_a_version_that_becomes_a_canary_announces_it() -> None:
    assert announce_canary_step({"version": "4", "state": "registered"}) == {"version": "4"}
    with pytest.raises(AirflowSkipException, match="version 1 is champion"):
        announce_canary_step({"version": "1", "state": "champion"})
