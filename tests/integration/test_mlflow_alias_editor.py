"""Someone moves an alias in MLflow's own UI (its alias editor calls set_registered_model_alias): `mlcd status`
says the alias and the record disagree and how to repair it; `mlcd reconcile --dry-run` lists the repair."""

from __future__ import annotations

import uuid

import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.integration


def test_an_alias_moved_in_mlflows_ui_is_reported_with_the_way_back(tracking_uri: str) -> None:
    from mlflow import MlflowClient

    from mlcd.cli import cli
    from mlcd.registry import ModelRegistry

    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment(f"alias-{uuid.uuid4().hex[:8]}")
    name = f"alias-editor-{uuid.uuid4().hex[:8]}"
    registry = ModelRegistry(tracking_uri, name)
    versions = []
    for _ in range(2):
        run = client.create_run(experiment)
        client.set_terminated(run.info.run_id)
        versions.append(registry.register_run_model(run.info.run_id, f"runs:/{run.info.run_id}/model"))
    registry.bootstrap_champion(versions[0], "tests")
    env = {"MLFLOW_TRACKING_URI": tracking_uri, "MLCD_MODEL_NAME": name}
    clean = CliRunner().invoke(cli, ["status"], env=env)
    assert clean.exit_code == 0 and "disagree" not in clean.output

    client.set_registered_model_alias(name, "champion", versions[1])  # what MLflow's alias editor does
    status = CliRunner().invoke(cli, ["status"], env=env)
    assert status.exit_code == 0, status.output
    assert "WARNING: aliases and rollout records disagree" in status.output
    assert f"alias champion -> version {versions[1]}" in status.output
    assert "MLflow's alias editor" in status.output and "mlcd reconcile --dry-run" in status.output
    dry = CliRunner().invoke(cli, ["reconcile", "--dry-run"], env=env)
    assert dry.exit_code in (0, 1), dry.output
    assert f"champion_record: alias champion -> version {versions[1]}" in dry.output  # named, with its violation
    assert client.get_model_version_by_alias(name, "champion").version == versions[1]  # a dry run moves nothing
