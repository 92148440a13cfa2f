"""The registry, the evaluate/register tasks and ``mlcd status``/``history`` against a real MLflow server.

Two real Keras models meeting the contract are logged once per module (about 11 s each): a briefly fitted
"good" one and an untrained "bad" one. Registry-only tests register cheap empty runs that point at the good
model's URI: versions are keyed by training run, not by model.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration


# ------------------------------------------------------------------------------------------------ fixtures
def _tiny_model(fit_on: tuple[Any, Any] | None) -> Any:
    import keras

    model = keras.Sequential([
        keras.Input(shape=(28, 28)),
        keras.layers.Rescaling(1.0 / 255),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    if fit_on is not None:
        model.fit(fit_on[0].astype("float32"), fit_on[1], epochs=2, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def logged(mlflow_server, reference_data, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Two logged models, an experiment for cheap runs, and a snapshot whose test split is the frozen set."""
    import mlflow

    from mlcd.data.snapshot import write_arrays_snapshot
    from mlcd.training.tracking import seal_model

    mlflow.set_tracking_uri(mlflow_server.url)
    exp_id = mlflow.set_experiment("registry-tests").experiment_id
    ref = reference_data
    out: dict[str, Any] = {"experiment_id": exp_id}
    for name, fit in (("good", (ref.x_train[:6000], ref.y_train[:6000])), ("bad", None)):
        with mlflow.start_run(run_name=name) as run:
            mlflow.tensorflow.log_model(_tiny_model(fit), name="model")
        out[name] = {"run_id": run.info.run_id, "model_uri": f"runs:/{run.info.run_id}/model"}
        seal_model(out[name]["model_uri"], mlflow_server.url)  # as the trainer does: evaluation refuses unsealed
    snap = write_arrays_snapshot(ref.x_test[:5000], ref.y_test[:5000], tmp_path_factory.mktemp("snapshots"))
    out["snapshot_path"] = str(snap.path)
    out["snapshot_id"] = snap.snapshot_id
    return out


def _empty_run(client: Any, experiment_id: str) -> str:
    run = client.create_run(experiment_id)
    client.set_terminated(run.info.run_id)
    return str(run.info.run_id)


@pytest.fixture
def registry(tracking_uri: str, logged: dict[str, Any]) -> Any:
    from mlcd.registry import ModelRegistry

    return ModelRegistry(tracking_uri, f"test-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def experiment(mlflow_server) -> str:  # type: ignore[no-untyped-def]
    """An experiment for cheap empty runs (no model logged: registry moves do not read the weights)."""
    from mlflow import MlflowClient

    return str(MlflowClient(mlflow_server.url).create_experiment(f"registry-moves-{uuid.uuid4().hex[:8]}"))


def _versions(registry: Any, n: int, experiment: str) -> list[str]:
    out = []
    for _ in range(n):
        run_id = _empty_run(registry.client, experiment)
        out.append(registry.register_run_model(run_id, f"runs:/{run_id}/model", {"k": "v"}))
    return out


@pytest.fixture
def moves(tracking_uri: str, experiment: str) -> Any:
    """A fresh registered-model name on the session server, for tests that need no logged weights."""
    from mlcd.registry import ModelRegistry

    return ModelRegistry(tracking_uri, f"moves-{uuid.uuid4().hex[:8]}")


# ------------------------------------------------------------------------------------------------ registry
def test_registration_is_idempotent(registry: Any, logged: dict[str, Any]) -> None:
    run_id = logged["good"]["run_id"]
    v1 = registry.register_run_model(run_id, logged["good"]["model_uri"], {"mlcd.verdict": "pass"})
    v2 = registry.register_run_model(run_id, logged["good"]["model_uri"], {"mlcd.verdict": "pass", "x": "1"})
    assert v1 == v2 == "1"
    found = registry.client.search_model_versions(f"name='{registry.model_name}' and run_id='{run_id}'")
    assert len(found) == 1
    info = registry.get_version_info(v1)
    assert info["source"].startswith("models:/m-")  # MLflow 3 LoggedModel, as mlflow.register_model does
    assert info["tags"]["mlcd.verdict"] == "pass" and info["tags"]["x"] == "1"
    record = registry.get_state(v1)
    assert record.state.value == "registered" and len(record.transitions()) == 1
    with pytest.raises(ValueError, match="owned by the rollout record"):
        registry.register_run_model(run_id, logged["good"]["model_uri"], {"mlcd.state": "champion"})


def test_names_are_validated_before_calling(tracking_uri: str) -> None:
    from mlcd.registry import ModelRegistry

    with pytest.raises(ValueError, match="invalid model name"):
        ModelRegistry(tracking_uri, "bad' or name='x")
    reg = ModelRegistry(tracking_uri, "fine-name")
    for alias in ("Champion", "latest", "v3", "", "a b"):
        with pytest.raises(ValueError, match="invalid alias"):
            reg.get_alias_version(alias)
    with pytest.raises(ValueError, match="invalid model version"):
        reg.set_alias("champion", "0", expected=None)
    with pytest.raises(ValueError, match="invalid MLflow run id"):
        reg.find_version_by_run("x' or 1=1")
    assert reg.get_alias_version("champion") is None  # model absent: no alias, no error


def test_compare_then_set_refuses_a_stale_promotion(moves: Any, experiment: str) -> None:
    registry = moves
    from mlcd.registry import StaleAliasError

    v1, v2, v3 = _versions(registry, 3, experiment)
    registry.set_alias("champion", v1, expected=None)
    registry.set_alias("champion", v1, expected=None)  # re-run of a done move is fine
    # Two DAG runs both read champion == v1; the first promotes v2 ...
    registry.set_alias("champion", v2, expected=v1)
    # ... the second, still believing v1 is champion, is refused and nothing moves.
    with pytest.raises(StaleAliasError, match="points at version 2, expected 1"):
        registry.set_alias("champion", v3, expected=v1)
    assert registry.get_alias_version("champion") == v2
    with pytest.raises(StaleAliasError):
        registry.delete_alias("champion", v1)
    # bootstrap is a compare-then-set against "no champion"
    with pytest.raises(StaleAliasError):
        registry.bootstrap_champion(v3, actor="test")
    assert registry.get_state(v3).state.value == "registered"


def test_promote_and_rollback_move_aliases_and_record_states(moves: Any, experiment: str) -> None:
    registry = moves
    from mlcd.registry import IllegalTransitionError, RolloutError, StaleAliasError

    v1, v2, v3, v4 = _versions(registry, 4, experiment)
    registry.bootstrap_champion(v1, actor="alice", dag_run_id="run-1")
    assert registry.aliases() == {"champion": v1}

    registry.start_canary(v2, actor="airflow", reason="gate passed", dag_run_id="run-2")
    registry.record_event(v2, "canary_step", {"weight": 5, "verdict": "pass"}, actor="airflow")
    with pytest.raises(StaleAliasError, match="still in rollout"):
        registry.start_canary(v3, actor="airflow", reason="second canary")
    registry.promote(v2, actor="airflow", reason="canary passed 4 steps", dag_run_id="run-2")
    registry.promote(v2, actor="airflow", reason="re-run", dag_run_id="run-2")  # idempotent
    assert registry.aliases() == {"champion": v2, "previous": v1}
    assert registry.get_state(v1).state.value == "previous"
    rec2 = registry.get_state(v2)
    assert rec2.state.value == "champion"
    assert rec2.tags["mlcd.promoted_by"] == "airflow"
    assert [e.get("to", e.get("event")) for e in rec2.history] == [
        "registered", "canary", "canary_step", "promote_started", "champion"
    ]
    tags2 = registry.get_version_info(v2)["tags"]
    assert tags2["mlcd.state"] == "champion" and len(json.loads(tags2["mlcd.history"])) == 5

    # A canary rolled back loses its alias; a second rollback changes nothing.
    registry.start_canary(v3, actor="airflow", reason="gate passed")
    registry.rollback(v3, "error rate 12% vs 0.1%", {"p_value": 1e-6, "errors": [12, 1]}, actor="guard")
    n_entries = len(registry.get_state(v3).history)
    again = registry.rollback(v3, "again", {}, actor="guard")
    assert again.state.value == "rolled_back" and len(again.history) == n_entries
    assert "canary" not in registry.aliases()
    assert json.loads(registry.get_version_info(v3)["tags"]["mlcd.rollback_evidence"])["p_value"] == 1e-6
    with pytest.raises(IllegalTransitionError):
        registry.promote(v3, actor="bob", reason="try anyway")

    # Promote v4: v2 -> previous, v1 -> archived. Then a bake-period rollback restores v2.
    registry.start_canary(v4, actor="airflow", reason="gate passed")
    registry.promote(v4, actor="airflow", reason="canary passed")
    assert registry.aliases() == {"champion": v4, "previous": v2}
    assert registry.get_state(v1).state.value == "archived"
    registry.rollback(v4, "live accuracy dropped in bake period", {"acc": [0.91, 0.98]}, actor="guard")
    assert registry.aliases() == {"champion": v2}
    assert registry.get_state(v2).state.value == "champion"
    assert registry.get_state(v4).state.value == "rolled_back"
    with pytest.raises(RolloutError, match="no previous version"):
        registry.rollback(v2, "nothing to restore", {}, actor="guard")

    status = registry.status()
    assert status["consistent"], status["problems"]
    assert status["aliases"] == {"champion": v2, "canary": None, "previous": None}
    assert {v["version"]: v["state"] for v in status["versions"]} == {
        v1: "archived", v2: "champion", v3: "rolled_back", v4: "rolled_back"
    }
    champions = [(iv["version"], iv["end"] is None) for iv in registry.alias_history() if iv["alias"] == "champion"]
    assert champions == [(v1, False), (v2, False), (v4, False), (v2, True)]
    first = next(iv for iv in registry.alias_history() if iv["alias"] == "champion")
    assert registry.champion_at(first["start"]) == v1
    assert registry.champion_at("1970-01-01T00:00:00.000Z") is None


def test_promote_converges_after_a_crash_halfway(moves: Any, experiment: str) -> None:
    registry = moves
    v1, v2 = _versions(registry, 2, experiment)
    registry.bootstrap_champion(v1, actor="test")
    registry.start_canary(v2, actor="test", reason="gate passed")
    # What a promote that died right after moving the champion alias leaves behind:
    registry.record_event(v2, "promote_started", {"old_champion": v1, "old_previous": None}, actor="test")
    registry.set_alias("previous", v1, expected=None)
    registry.set_alias("champion", v2, expected=v1)
    assert registry.status()["consistent"] is False
    registry.promote(v2, actor="test", reason="re-run")
    assert registry.aliases() == {"champion": v2, "previous": v1}
    assert registry.status()["consistent"]


def test_moves_refuse_what_the_state_machine_refuses(moves: Any, experiment: str) -> None:
    """Illegal moves raise and change nothing; a move to the state already held is a no-op without a new entry."""
    from mlcd.registry import IllegalTransitionError, RolloutError

    registry = moves
    v1, v2, v3 = _versions(registry, 3, experiment)
    with pytest.raises(RolloutError, match="only a canary or a champion"):
        registry.rollback(v1, "not in service", {}, actor="guard")
    registry.reject(v2, "accuracy 0.41 < floor 0.90", actor="airflow")  # a single reason given as a string
    rec2 = registry.get_state(v2)
    assert rec2.state.value == "rejected" and json.loads(rec2.tags["mlcd.reasons"]) == ["accuracy 0.41 < floor 0.90"]
    assert rec2.transitions()[-1]["why"] == "gate rejected: accuracy 0.41 < floor 0.90"
    for move in (lambda: registry.start_canary(v2, actor="a", reason="r"),
                 lambda: registry.promote(v2, actor="a", reason="r"),
                 lambda: registry.bootstrap_champion(v2, actor="a")):
        with pytest.raises(IllegalTransitionError):
            move()
    assert registry.aliases() == {} and registry.get_state(v2).state.value == "rejected"
    n = len(registry.get_state(v2).history)
    assert registry.record_transition(v2, "rejected", "again", actor="a").state.value == "rejected"
    assert len(registry.get_state(v2).history) == n
    with pytest.raises(ValueError, match="owned by the rollout record"):
        registry.set_version_tags(v3, {"mlcd.history": "[]"})
    with pytest.raises(ValueError, match="owned by the rollout record"):
        registry.set_version_tags(v3, {"mlcd.state": "champion"})
    registry.set_version_tags(v3, {"note": 5})
    assert registry.get_version_info(v3)["tags"]["note"] == "5"
    # A transition carries who, why, which run and its details.
    rec = registry.record_transition(v3, "canary", "by hand", actor="bob", dag_run_id="run-9", details={"w": 5})
    last = rec.transitions()[-1]
    assert (last["from"], last["to"], last["why"], last["by"], last["dag_run"], last["d"]) == (
        "registered", "canary", "by hand", "bob", "run-9", {"w": 5})
    assert registry.get_version_info(v3)["tags"]["mlcd.state"] == "canary"


def test_promote_without_a_canary_and_a_leftover_canary_alias(moves: Any, experiment: str) -> None:
    registry = moves
    v1, v2, v3, v4 = _versions(registry, 4, experiment)
    # No champion yet: promoting a registered version is the bootstrap.
    assert registry.promote(v1, actor="alice", reason="first").state.value == "champion"
    assert registry.aliases() == {"champion": v1}
    assert [e.get("to") for e in registry.get_state(v1).transitions()] == ["registered", "champion"]
    assert registry.get_version_info(v1)["tags"]["mlcd.promoted_by"] == "alice"  # who made it champion
    # With a champion: the canary is skipped by hand, and the record says so.
    registry.promote(v2, actor="bob", reason="hotfix", dag_run_id="run-2")
    assert registry.aliases() == {"champion": v2, "previous": v1}
    whys = [(e.get("to"), e.get("why")) for e in registry.get_state(v2).transitions()]
    assert whys == [("registered", "registered from training run"), ("canary", "canary skipped: hotfix"),
                    ("champion", "hotfix")]
    assert registry.get_state(v1).transitions()[-1]["why"] == f"replaced by version {v2}"
    # A canary rolled back leaves no alias; a leftover alias of a finished version is replaced by the next canary.
    registry.start_canary(v3, actor="a", reason="gate passed")
    registry.rollback(v3, "broken", {"p": 0.001}, actor="guard")
    tags3 = registry.get_version_info(v3)["tags"]
    assert tags3["mlcd.rollback_reason"] == "broken" and json.loads(tags3["mlcd.rollback_evidence"]) == {"p": 0.001}
    registry.client.set_registered_model_alias(registry.model_name, "canary", v3)  # stale leftover
    registry.start_canary(v4, actor="a", reason="gate passed")
    assert registry.aliases()["canary"] == v4
    registry.start_canary(v4, actor="a", reason="re-run")  # a re-run is fine
    assert registry.get_state(v4).state.value == "canary"
    # Promoting a version that is already champion only clears a canary alias left on it.
    registry.promote(v4, actor="a", reason="passed")
    registry.client.set_registered_model_alias(registry.model_name, "canary", v4)
    registry.promote(v4, actor="a", reason="re-run")
    assert registry.aliases() == {"champion": v4, "previous": v2}
    assert registry.get_state(v1).state.value == "archived"
    assert registry.get_state(v1).transitions()[-1]["why"] == f"previous alias taken by {v2}"


def test_promote_back_a_previous_version_and_a_champion_out_of_line(moves: Any, experiment: str) -> None:
    from mlcd.registry import RolloutError

    registry = moves
    v1, v2 = _versions(registry, 2, experiment)
    registry.bootstrap_champion(v1, actor="a")
    registry.start_canary(v2, actor="a", reason="gate passed")
    registry.promote(v2, actor="a", reason="passed")
    # Promote the previous version back by hand: the aliases swap, no alias is left dangling.
    registry.promote(v1, actor="bob", reason="roll forward to the old one")
    assert registry.aliases() == {"champion": v1, "previous": v2}
    assert (registry.get_state(v1).state.value, registry.get_state(v2).state.value) == ("champion", "previous")
    assert registry.status()["consistent"]
    # A champion record whose alias points elsewhere is refused with a readable line, not "fixed" silently.
    registry.client.set_registered_model_alias(registry.model_name, "champion", v2)
    with pytest.raises(RolloutError, match="recorded champion but the champion alias points at"):
        registry.promote(v1, actor="a", reason="again")
    status = registry.status()
    assert not status["consistent"]
    assert f"alias champion -> version {v2}, but its state is previous" in status["problems"]
    assert f"version {v1} is champion but alias champion -> {v2}" in status["problems"]
    with pytest.raises(RolloutError, match="recorded champion but the alias points at"):
        registry.rollback(v1, "bad", {}, actor="guard")


def test_champion_rollback_converges_after_a_crash_halfway(moves: Any, experiment: str) -> None:
    registry = moves
    v1, v2 = _versions(registry, 2, experiment)
    registry.bootstrap_champion(v1, actor="a")
    registry.start_canary(v2, actor="a", reason="gate passed")
    registry.promote(v2, actor="a", reason="passed")
    # What a bake-period rollback that died right after moving the champion alias leaves behind:
    registry.record_event(v2, "rollback_started", {"restore": v1}, actor="guard")
    registry.set_alias("champion", v1, expected=v2)
    assert registry.aliases() == {"champion": v1, "previous": v1}
    rec = registry.rollback(v2, "accuracy dropped", {"acc": [0.9, 0.98]}, actor="guard", dag_run_id="g-1")
    assert rec.state.value == "rolled_back" and rec.transitions()[-1]["d"] == {"evidence": {"acc": [0.9, 0.98]}}
    assert registry.aliases() == {"champion": v1}
    restored = registry.get_state(v1)
    assert restored.state.value == "champion"
    assert restored.transitions()[-1]["why"] == f"restored by rollback of version {v2}: accuracy dropped"
    assert registry.status()["consistent"]


def test_an_mlflow_error_that_is_not_absence_is_raised(mlflow_server: Any) -> None:
    """Only "no such model" reads as "no aliases"; any other MLflow error (here a 404 endpoint) is raised."""
    from mlflow.exceptions import MlflowException

    from mlcd.registry import ModelRegistry

    wrong = ModelRegistry(f"{mlflow_server.url}/not-mlflow", "some-model")
    with pytest.raises(MlflowException):
        wrong.aliases()
    with pytest.raises(MlflowException):
        wrong.status()


def test_status_and_history_of_an_absent_model(moves: Any) -> None:
    status = moves.status()
    assert (status["versions"], status["consistent"], status["problems"]) == ([], True, [])
    assert status["aliases"] == {"champion": None, "canary": None, "previous": None}
    assert moves.history() == [] and moves.alias_history() == [] and moves.champion_at("2100-01-01") is None


def test_a_version_made_elsewhere_gets_a_record_and_entries_stay_whole(moves: Any, experiment: str) -> None:
    """A version created outside mlcd starts its record on first registration; big details are kept whole."""
    from mlcd.registry.client import MAX_DETAILS_CHARS

    registry = moves
    registry.ensure_registered_model()
    registry.ensure_registered_model()  # idempotent
    run_id = _empty_run(registry.client, experiment)
    registry.client.create_model_version(registry.model_name, f"runs:/{run_id}/model", run_id=run_id)
    version = registry.register_run_model(run_id, f"runs:/{run_id}/model", {"mlcd.verdict": "pass"})
    assert version == "1"
    rec = registry.get_state(version)
    assert rec.state.value == "registered" and rec.tags["mlcd.verdict"] == "pass"
    assert [(e["to"], e["why"], e["run_id"]) for e in rec.transitions()] == [("registered", "record started", run_id)]
    assert "dag_run" not in rec.transitions()[0] and "by" not in rec.transitions()[0]  # empty fields are left out
    # Details just under the per-details bound are kept whole in the entry (the entry's own bound is larger).
    details = {"evidence": "e" * (MAX_DETAILS_CHARS - 100)}
    registry.record_event(version, "canary_step", details, actor="guard")
    assert registry.get_state(version).history[-1]["d"] == details


def test_register_challenger_acts_on_each_verdict(tracking_uri: str, experiment: str) -> None:
    """The register task without TensorFlow: hand-built evaluations of cheap runs, every branch."""
    from mlflow import MlflowClient

    from mlcd.registry import GateRejected, ModelRegistry, StaleAliasError
    from mlcd.registry.task import register_challenger

    client = MlflowClient(tracking_uri)
    name = f"task-{uuid.uuid4().hex[:8]}"
    common = {"tracking_uri": tracking_uri, "model_name": name, "actor": "airflow"}

    def train(run_id: str) -> dict[str, Any]:
        return {"run_id": run_id, "model_uri": f"runs:/{run_id}/model", "snapshot_path": "/snapshots/snap-1"}

    def evaluation(passed: bool, champion: str | None, **extra: Any) -> dict[str, Any]:
        verdict = "pass" if passed else "fail"
        return {"passed": passed, "verdict": verdict, "reasons": [f"r-{verdict}"], "summary": f"gate {verdict}",
                "metrics": {"challenger": {"accuracy": 0.97, "n": 100, "other": 1}}, "p_value": 0.0123456789,
                "b": 3, "c": 9, "champion_version": champion, **extra}

    runs = [_empty_run(client, experiment) for _ in range(4)]
    first = register_challenger(train(runs[0]), evaluation(True, None), dag_run_id="d1", **common)
    assert first == {"model_name": name, "version": "1", "state": "champion", "champion_version": "1",
                     "verdict": "pass", "passed": True, "model_uri": f"models:/{name}/1"}
    reg = ModelRegistry(tracking_uri, name)
    tags = reg.get_version_info("1")["tags"]
    assert (tags["mlcd.verdict"], tags["mlcd.forced"], tags["mlcd.snapshot_id"], tags["mlcd.dag_run_id"]) == (
        "pass", "false", "snap-1", "d1")
    assert tags["mlcd.p_value"] == "0.0123457" and tags["mlcd.discordant"] == "b=3,c=9"
    assert json.loads(tags["mlcd.metrics"]) == {"accuracy": 0.97, "n": 100}
    assert reg.get_state("1").transitions()[-1]["why"] == "first model: no champion to compare with; gate pass"

    second = register_challenger(train(runs[1]), evaluation(True, "1", forced=True), dag_run_id="d2", **common)
    assert (second["version"], second["state"], second["champion_version"]) == ("2", "registered", "1")
    assert reg.get_version_info("2")["tags"]["mlcd.forced"] == "true"
    assert reg.aliases() == {"champion": "1"}  # the canary task moves it, not register

    # The champion changed since this challenger was evaluated: refuse, evaluate again.
    with pytest.raises(StaleAliasError, match="evaluated against 9"):
        register_challenger(train(runs[2]), evaluation(True, "9"), dag_run_id="d3", **common)
    assert reg.get_state("3").state.value == "registered"

    with pytest.raises(GateRejected, match="gate fail") as err:
        register_challenger(train(runs[3]), evaluation(False, "1"), dag_run_id="d4", **common)
    assert (err.value.version, err.value.verdict) == ("4", "gate fail")
    assert reg.get_state("4").state.value == "rejected"
    # A retry of a rejected run whose evaluation now passes is still rejected: a rejection is final.
    with pytest.raises(GateRejected, match="model version 4 rejected"):
        register_challenger(train(runs[3]), evaluation(True, "1"), dag_run_id="d4", **common)
    assert reg.get_state("4").state.value == "rejected" and reg.aliases() == {"champion": "1"}


# ------------------------------------------------------------------------------------------------ tasks
def test_evaluate_and_register_bootstrap_then_reject_a_worse_model(
    tracking_uri: str, logged: dict[str, Any]
) -> None:
    from mlflow import MlflowClient

    from mlcd.evaluation.evaluate import evaluate_challenger
    from mlcd.registry import GateRejected, ModelRegistry
    from mlcd.registry.task import register_challenger

    name = f"task-{uuid.uuid4().hex[:8]}"
    cfg = {"accuracy_floor": 0.5}
    common = {"tracking_uri": tracking_uri, "model_name": name}
    good = {**logged["good"], "snapshot_path": logged["snapshot_path"], "snapshot_id": logged["snapshot_id"]}
    bad = {**logged["bad"], "snapshot_path": logged["snapshot_path"], "snapshot_id": logged["snapshot_id"]}

    ev1 = evaluate_challenger(good, config=cfg, **common)
    json.dumps(ev1)  # XCom-safe
    assert ev1["passed"] and ev1["first_model"] and ev1["champion_version"] is None
    assert ev1["metrics"]["challenger"]["accuracy"] > 0.8
    out1 = register_challenger(good, ev1, actor="test", dag_run_id="manual__1", **common)
    assert out1 == {
        "model_name": name, "version": "1", "state": "champion", "champion_version": "1", "verdict": "pass",
        "passed": True, "model_uri": f"models:/{name}/1",
    }
    assert register_challenger(good, ev1, actor="test", dag_run_id="manual__1", **common)["version"] == "1"
    run = MlflowClient(tracking_uri).get_run(good["run_id"])
    assert run.data.metrics["eval_accuracy"] == pytest.approx(ev1["metrics"]["challenger"]["accuracy"])

    ev2 = evaluate_challenger(bad, config=cfg, **common)
    assert not ev2["passed"] and ev2["verdict"] == "fail" and ev2["champion_version"] == "1"
    assert ev2["b"] > ev2["c"] and ev2["p_value"] < 1e-6
    with pytest.raises(GateRejected, match=r"model version 2 rejected: gate FAIL: .*floor") as err:
        register_challenger(bad, ev2, actor="test", dag_run_id="manual__2", **common)
    assert "McNemar" in str(err.value)
    with pytest.raises(GateRejected):  # a retry of the task rejects again, no second version
        register_challenger(bad, ev2, actor="test", dag_run_id="manual__2", **common)
    reg = ModelRegistry(tracking_uri, name)
    assert reg.aliases() == {"champion": "1"}
    rec = reg.get_state("2")
    assert rec.state.value == "rejected" and "McNemar" in rec.transitions()[-1]["why"]
    tags = reg.get_version_info("2")["tags"]
    assert tags["mlcd.verdict"] == "fail" and tags["mlcd.dag_run_id"] == "manual__2"
    assert tags["mlcd.snapshot_id"] == logged["snapshot_id"] and float(tags["mlcd.p_value"]) < 1e-6

    forced = evaluate_challenger(bad, config=cfg, force=True, **common)
    assert forced["passed"] and forced["verdict"] == "forced" and not forced["gate_passed"]


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_status_and_history(tracking_uri: str, experiment: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from mlcd.cli import cli
    from mlcd.mlflow_server import free_port
    from mlcd.registry import ModelRegistry

    name = f"cli-{uuid.uuid4().hex[:8]}"
    reg = ModelRegistry(tracking_uri, name)
    v1, v2, v3 = _versions(reg, 3, experiment)
    reg.set_version_tags(v3, {"mlcd.verdict": "fail"})
    reg.bootstrap_champion(v1, actor="alice")
    reg.start_canary(v2, actor="airflow", reason="gate passed")
    reg.promote(v2, actor="airflow", reason="canary passed 4 steps")
    reg.reject(v3, ["accuracy 0.41 < floor 0.90"], actor="airflow")

    runner = CliRunner()
    args = ["--tracking-uri", tracking_uri, "--model-name", name]
    res = runner.invoke(cli, ["status", *args])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert any(line.split()[:3] == ["champion", v2, "champion"] for line in lines), res.output
    assert any(line.split()[:3] == ["previous", v1, "previous"] for line in lines), res.output
    assert any(line.split()[:4] == [v3, "rejected", "-", "fail"] for line in lines), res.output
    assert "WARNING" not in res.output

    res = runner.invoke(cli, ["history", *args])
    assert res.exit_code == 0, res.output
    assert "champion timeline" in res.output and "canary passed 4 steps" in res.output
    assert "accuracy 0.41 < floor 0.90" in res.output and "registered -> rejected" in res.output
    section = res.output.split("champion timeline")[1].split("\n\n")[0]
    timeline = [row for row in section.splitlines() if row[:1].isdigit()]
    assert [row.split()[0] for row in timeline] == [v1, v2]
    assert timeline[-1].split()[2] == "now"

    res = runner.invoke(cli, ["history", "--json", *args])
    assert res.exit_code == 0
    assert {e["version"] for e in json.loads(res.output)["entries"]} == {v1, v2, v3}

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    res = runner.invoke(cli, ["status", "--tracking-uri", f"http://127.0.0.1:{free_port()}"])
    assert res.exit_code == 1
    assert res.output.count("\n") == 1 and "unavailable" in res.output and "Connection refused" in res.output


def test_mlflow_hook_builds_a_registry_from_the_connection(
    tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from mlcd.airflow.hooks import MlflowHook

    host, port = tracking_uri.removeprefix("http://").split(":")
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_TEST",
        json.dumps({"conn_type": "http", "host": host, "port": int(port), "password": "s3cret-token"}),
    )
    hook = MlflowHook("mlflow_test")
    assert hook.config.tracking_uri == tracking_uri and hook.config.token == "s3cret-token"
    assert "s3cret" not in repr(hook.config)
    reg = hook.get_registry("hook-model")
    assert reg.get_alias_version("champion") is None  # talks to the real server with the token attached
    assert "MLFLOW_TRACKING_TOKEN" not in os.environ
    assert not [k for k, v in os.environ.items() if "s3cret-token" in v and k != "AIRFLOW_CONN_MLFLOW_TEST"]
    monkeypatch.setenv("MLCD_MLFLOW_URI", "http://127.0.0.1:5999")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert MlflowHook("mlflow_absent").config.tracking_uri == "http://127.0.0.1:5999"


# ------------------------------------------------------------------------------------------------ faults
@pytest.fixture
def own_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A server of this test's own, so killing it leaves the session's server alone."""
    from mlcd.mlflow_server import LocalMlflowServer

    # Fail fast instead of MLflow's minutes of retries: Airflow's task retries are the retry policy here.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    server = LocalMlflowServer(root=tmp_path / "mlflow").start()
    try:
        yield server
    finally:
        server.stop()


def _kill_around(monkeypatch: pytest.MonkeyPatch, client: Any, method: str, server: Any, after: bool) -> None:
    """Kill the real server right before (or right after) one real client call, as a crash there would."""
    real = getattr(client, method)

    def call(*args: Any, **kwargs: Any) -> Any:
        if not after:
            server.kill()
            return real(*args, **kwargs)
        result = real(*args, **kwargs)
        server.kill()
        return result

    monkeypatch.setattr(client, method, call)


def test_registry_task_rerun_after_a_killed_server(own_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    from mlcd.mlflow_server import LocalMlflowServer
    from mlcd.registry import ModelRegistry, RegistryUnavailableError
    from mlcd.registry.task import register_challenger

    url, name = own_server.url, "fault-model"
    client = MlflowClient(url)
    exp = client.create_experiment("faults")
    runs = [_empty_run(client, exp) for _ in range(2)]
    passed = {"passed": True, "verdict": "pass", "reasons": ["ok"], "summary": "gate PASS: ok",
              "metrics": {"challenger": {"accuracy": 0.97}}, "p_value": None, "champion_version": None}

    def train_result(run_id: str) -> dict[str, Any]:
        return {"run_id": run_id, "model_uri": f"runs:/{run_id}/model", "snapshot_path": "/snapshots/abc"}

    # 1. The server dies right after creating the version, before the task sees the answer.
    import mlcd.registry.task as task_module

    real_registry = task_module.ModelRegistry

    def crashing_registry(*args: Any, **kwargs: Any) -> Any:
        reg = real_registry(*args, **kwargs)
        _kill_around(monkeypatch, reg.client, "create_model_version", own_server, after=True)
        return reg

    monkeypatch.setattr(task_module, "ModelRegistry", crashing_registry)
    with pytest.raises(RegistryUnavailableError) as err:
        register_challenger(train_result(runs[0]), passed, tracking_uri=url, model_name=name, actor="t",
                            dag_run_id="r1")
    assert url in str(err.value) and "\n" not in str(err.value)
    monkeypatch.setattr(task_module, "ModelRegistry", real_registry)
    restarted = LocalMlflowServer(root=own_server.root, port=own_server.port).start()
    own_server.process = restarted.process  # the fixture stops whichever process runs now
    out = register_challenger(train_result(runs[0]), passed, tracking_uri=url, model_name=name, actor="t",
                              dag_run_id="r1")
    assert (out["version"], out["state"]) == ("1", "champion")
    assert len(client.search_model_versions(f"name='{name}'")) == 1

    # 2. The server dies in a promotion, right before the champion alias moves.
    out2 = register_challenger(train_result(runs[1]), {**passed, "champion_version": "1"}, tracking_uri=url,
                               model_name=name, actor="t", dag_run_id="r2")
    assert (out2["version"], out2["state"]) == ("2", "registered")
    reg = ModelRegistry(url, name)
    reg.start_canary("2", actor="t", reason="gate passed")
    real_set = reg.client.set_registered_model_alias

    def set_alias(model: str, alias: str, version: str) -> None:
        if alias == "champion":
            own_server.kill()
        real_set(model, alias, version)

    monkeypatch.setattr(reg.client, "set_registered_model_alias", set_alias)
    with pytest.raises(RegistryUnavailableError):
        reg.promote("2", actor="t", reason="canary passed")
    restarted = LocalMlflowServer(root=own_server.root, port=own_server.port).start()
    own_server.process = restarted.process
    fresh = ModelRegistry(url, name)
    assert fresh.aliases() == {"champion": "1", "previous": "1", "canary": "2"}  # half-way, serving unchanged
    fresh.promote("2", actor="t", reason="canary passed (re-run)")
    assert fresh.aliases() == {"champion": "2", "previous": "1"}
    status = fresh.status()
    assert status["consistent"], status["problems"]
    assert [v["state"] for v in status["versions"]] == ["previous", "champion"]
    assert len(client.search_model_versions(f"name='{name}'")) == 2
