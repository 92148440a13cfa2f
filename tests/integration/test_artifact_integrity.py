"""A model version is code: only the artifact the training run produced is loaded, by the gateway and by evaluation.

Against a real MLflow server: models are logged and sealed as the trainer seals them, registered, then the
artifact in the server's store is tampered with; the gateway's loader, the gateway's canary route and evaluation
must refuse it with a one-line reason, and serving must go on with the stable version.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.integration

TOKEN = "integrity-test-admin-token-0123456789"


def _tiny(seed: int) -> Any:
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((28, 28)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                             keras.layers.Dense(10)])


@pytest.fixture(scope="module")
def models(mlflow_server: Any, reference_data: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three logged models of this module only (they get tampered with), sealed like the trainer's, and a snapshot."""
    import mlflow

    from mlcd.data.snapshot import write_arrays_snapshot
    from mlcd.training.tracking import seal_model

    mlflow.set_tracking_uri(mlflow_server.url)
    mlflow.set_experiment("integrity-tests")
    out: dict[str, Any] = {}
    for kind, seed in (("good", 0), ("victim", 1), ("injected", 2), ("unsealed", 3)):
        with mlflow.start_run(run_name=kind) as run:
            info = mlflow.tensorflow.log_model(_tiny(seed), name="model", pip_requirements=["tensorflow-cpu"])
        if kind != "unsealed":
            seal_model(f"runs:/{run.info.run_id}/model", mlflow_server.url)
        out[kind] = {"run_id": run.info.run_id, "model_uri": f"runs:/{run.info.run_id}/model",
                     "model_id": info.model_id, "artifacts": _artifact_dir(mlflow_server, info.model_id)}
    snap = write_arrays_snapshot(reference_data.x_test[:500], reference_data.y_test[:500],
                                 tmp_path_factory.mktemp("integrity-snapshots"))
    out["snapshot_path"] = str(snap.path)
    return out


def _artifact_dir(server: Any, model_id: str) -> Path:
    """Where the server keeps a logged model's files: what someone with write access to the store can change."""
    found = [p for p in Path(server.root, "artifacts").rglob(model_id) if (p / "artifacts" / "MLmodel").exists()]
    assert len(found) == 1, found
    return found[0] / "artifacts"


def _register(tracking_uri: str, name: str, model_uri: str) -> str:
    from mlcd.registry import ModelRegistry

    registry = ModelRegistry(tracking_uri, name)
    run_id = model_uri.split("/")[1]
    return registry.register_run_model(run_id, model_uri)


def test_a_sealed_model_loads_and_predicts(tracking_uri: str, models: dict[str, Any]) -> None:
    from mlcd.model_io import TAG_MODEL_SHA256, load_predictor
    from mlcd.serving.models import mlflow_loader

    name = f"integrity-{uuid.uuid4().hex[:8]}"
    version = _register(tracking_uri, name, models["good"]["model_uri"])
    proba = mlflow_loader(name, tracking_uri)(version)(np.zeros((3, 28, 28), dtype=np.float32))
    assert proba.shape == (3, 10) and np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert load_predictor(models["good"]["model_uri"], tracking_uri).predict_classes(np.zeros((2, 28, 28))).shape == (2,)
    from mlflow import MlflowClient

    run_tags = MlflowClient(tracking_uri).get_run(models["good"]["run_id"]).data.tags
    assert len(run_tags[TAG_MODEL_SHA256]) == 64


def test_a_tampered_artifact_is_refused_by_the_gateway_and_by_evaluation(
    tracking_uri: str, models: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from mlcd.evaluation.evaluate import evaluate_challenger
    from mlcd.mlflow_server import free_port
    from mlcd.model_io import ArtifactIntegrityError
    from mlcd.registry import ModelRegistry
    from mlcd.rollout.router import LocalGatewayRouter, VersionRefused
    from mlcd.serving.config import GatewayConfig
    from mlcd.serving.models import mlflow_loader
    from mlcd.serving.server import GatewayServer

    name = f"integrity-{uuid.uuid4().hex[:8]}"
    stable = _register(tracking_uri, name, models["good"]["model_uri"])
    canary = _register(tracking_uri, name, models["victim"]["model_uri"])
    registry = ModelRegistry(tracking_uri, name)
    registry.bootstrap_champion(stable, "tests")
    # Someone with write access to the artifact store swaps the weights of the registered version (a valid
    # Keras file, so only the digest can tell).
    victim = models["victim"]["artifacts"] / "data" / "model.keras"
    shutil.copyfile(models["good"]["artifacts"] / "data" / "model.keras", victim)

    with pytest.raises(ArtifactIntegrityError, match="does not match") as info:
        mlflow_loader(name, tracking_uri)(canary)
    assert "\n" not in str(info.value) and f"models:/{name}/{canary}" in str(info.value)
    assert any("refusing to load" in r.getMessage() for r in caplog.records)

    # Evaluation of the tampered challenger fails instead of judging a model nobody trained.
    train_result = {**models["victim"], "snapshot_path": models["snapshot_path"]}
    with pytest.raises(ArtifactIntegrityError, match="does not match"):
        evaluate_challenger(train_result, tracking_uri=tracking_uri, model_name=name, config={"accuracy_floor": 0.0})

    # The gateway refuses it as a canary: the router gets 409 with the reason, and stable keeps serving everything.
    config = GatewayConfig(model_name=name, tracking_uri=tracking_uri, admin_token=TOKEN,
                           state_path=tmp_path / "state.json", drift=False)
    server = GatewayServer(config, free_port()).start()
    try:
        router = LocalGatewayRouter(server.url, TOKEN)
        assert router.get_routes().stable == stable
        # ...as a refusal the canary counts as a failed canary (not a transient router error it would retry).
        with pytest.raises(VersionRefused, match="409.*ArtifactIntegrityError.*does not match"):
            router.set_routes(stable, canary, 50)
        routes = router.get_routes()
        assert routes.stable == stable and routes.canary is None
        import httpx

        answers = {httpx.post(f"{server.url}/predict", json={"images": [np.zeros((28, 28), int).tolist()]}, timeout=30
                              ).json()["version"] for _ in range(10)}
        assert answers == {stable}
    finally:
        server.stop()


def test_code_injected_into_the_artifact_never_runs(tracking_uri: str, models: dict[str, Any], tmp_path: Path) -> None:
    """The MLflow flavour would put ``code/`` on sys.path and import the module MLmodel names: tamper with both."""
    from mlcd.model_io import ArtifactIntegrityError, load_keras_artifact
    from mlcd.serving.models import mlflow_loader

    name = f"integrity-{uuid.uuid4().hex[:8]}"
    version = _register(tracking_uri, name, models["injected"]["model_uri"])
    marker = tmp_path / "code-ran"
    art = models["injected"]["artifacts"]
    (art / "code").mkdir()
    (art / "code" / "mlcd_injected.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    mlmodel = (art / "MLmodel").read_text()
    mlmodel = mlmodel.replace("    code: null", "    code: code")
    mlmodel = mlmodel.replace("    keras_version:", "    keras_module: mlcd_injected\n    keras_version:")
    (art / "MLmodel").write_text(mlmodel)
    (art / "data" / "keras_module.txt").write_text("mlcd_injected")

    with pytest.raises(ArtifactIntegrityError, match="does not match"):
        mlflow_loader(name, tracking_uri)(version)
    assert not marker.exists()
    # Even with a digest that matches (someone who can also rewrite tags, and no signing key): no code is loaded.
    with pytest.raises(ArtifactIntegrityError, match="ships code"):
        load_keras_artifact(art)
    assert not marker.exists()


def test_an_unsealed_model_is_refused(tracking_uri: str, models: dict[str, Any]) -> None:
    from mlcd.model_io import ArtifactIntegrityError
    from mlcd.serving.models import mlflow_loader

    name = f"integrity-{uuid.uuid4().hex[:8]}"
    version = _register(tracking_uri, name, models["unsealed"]["model_uri"])
    with pytest.raises(ArtifactIntegrityError, match="no mlcd.model_sha256 recorded"):
        mlflow_loader(name, tracking_uri)(version)


def test_with_a_signing_key_only_a_model_signed_with_it_loads(
    tracking_uri: str, models: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A digest alone does not stop someone who may write tags too; a signature from a Secret's key does."""
    import mlflow
    from mlflow import MlflowClient

    from mlcd.model_io import SIGNING_KEY_ENV, TAG_MODEL_SHA256, TAG_MODEL_SIGNATURE, ArtifactIntegrityError, load_predictor
    from mlcd.training.tracking import seal_model

    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_name="signed") as run:
        mlflow.tensorflow.log_model(_tiny(4), name="model", pip_requirements=["tensorflow-cpu"])
    uri = f"runs:/{run.info.run_id}/model"
    monkeypatch.setenv(SIGNING_KEY_ENV, "key-from-a-secret-0123456789")
    tags = seal_model(uri, tracking_uri)
    assert len(tags[TAG_MODEL_SIGNATURE]) == 64
    assert load_predictor(uri, tracking_uri).predict_classes(np.zeros((1, 28, 28))).shape == (1,)

    with pytest.raises(ArtifactIntegrityError, match="does not match the signing key"):
        load_predictor(uri, tracking_uri, key="another-deployments-key")
    # Unsigned (the good model was sealed without a key): refused once a key is configured.
    with pytest.raises(ArtifactIntegrityError, match="has no signature"):
        load_predictor(models["good"]["model_uri"], tracking_uri)
    # Whoever rewrites the digest tag cannot forge the signature.
    client = MlflowClient(tracking_uri)
    model_id = client.get_run(run.info.run_id).outputs.model_outputs[0].model_id
    client.set_logged_model_tags(model_id, {TAG_MODEL_SHA256: "0" * 64})
    with pytest.raises(ArtifactIntegrityError, match="does not match"):
        load_predictor(uri, tracking_uri)
