"""``CanaryRollout`` step by step against the REAL registry (the session's MLflow server) with hand-driven gateway
traffic through its ``scrape`` seam (the gateway's real metrics, ``tests/gatewaysim.py``), and the rollback's
safety paths: traffic before bookkeeping, a champion's ``previous``, crash recovery, a router that fails.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import pytest

from mlcd.registry import ModelRegistry
from mlcd.registry.state import RolloutState
from mlcd.registry.tags import TAG_ROLLBACK_REASON
from mlcd.rollout.actions import rollback
from mlcd.rollout.canary import (
    CanaryRollout,
    EndReason,
    RolloutAborted,
    RolloutProgress,
    RolloutStopped,
    RolloutUndecided,
)
from mlcd.rollout.router import RouteConflict, RouterError, RouteStatus, VersionRefused
from mlcd.rollout.spec import Action, Outcome, RolloutSpec
from tests.gatewaysim import SimGateway, behaviours

pytestmark = pytest.mark.integration

_names = itertools.count()


class SimRouter:
    """The simulated gateway's routes, with a log of what the registry said when traffic moved."""

    def __init__(self, gw: SimGateway, registry: ModelRegistry, fail: bool = False) -> None:
        self.gw, self.registry, self.fail = gw, registry, fail
        self.routes = RouteStatus(None, None, 0)
        self.moves: list[tuple[RouteStatus, dict[str, str]]] = []

    def get_routes(self) -> RouteStatus:
        return self.routes

    def set_routes(self, stable: str, canary: str | None, canary_weight: int,
                   expected_generation: int | str | None = None, *, holdback: str | None = None,
                   holdback_weight: int = 0) -> RouteStatus:
        if self.fail:
            raise RouterError("gateway admin API unreachable (simulated)")
        if expected_generation is not None and expected_generation != self.routes.generation:
            raise RouteConflict(f"routes at generation {self.routes.generation}, not {expected_generation}")
        generation = int(self.routes.generation or 0) + 1  # as the gateway counts its moves
        held = holdback is not None and holdback != stable and holdback_weight > 0
        self.routes = RouteStatus(str(stable), canary, canary_weight if canary else 0, generation,
                                  str(holdback) if held else None, holdback_weight if held else 0)
        self.moves.append((self.routes, self.registry.aliases()))
        self.gw.set_routes(str(stable), canary, canary_weight, holdback=holdback, holdback_weight=holdback_weight)
        return self.routes


def _version(client: Any, name: str, tmp: Path) -> str:
    run = client.create_run("0", run_name=f"rollout-{name}")
    model_dir = tmp / run.info.run_id
    model_dir.mkdir()
    (model_dir / "MLmodel").write_text("flavors: {}\n")
    client.log_artifact(run.info.run_id, str(model_dir / "MLmodel"), artifact_path="model")
    client.set_terminated(run.info.run_id)
    return ModelRegistry(client.tracking_uri, name).register_run_model(run.info.run_id, f"runs:/{run.info.run_id}/model")


@pytest.fixture
def setup(mlflow_server: Any, tmp_path: Path) -> dict[str, Any]:
    """A fresh registered model with champion ``1`` and registered ``2``; a simulated gateway serving ``1``."""
    from mlflow import MlflowClient

    name = f"rollout-unit-{next(_names)}"
    client = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
    registry = ModelRegistry(mlflow_server.url, name)
    v1, v2 = _version(client, name, tmp_path), _version(client, name, tmp_path)
    registry.bootstrap_champion(v1, "tests")
    return {"registry": registry, "client": client, "name": name, "v1": v1, "v2": v2, "tmp": tmp_path}


def _rollout(s: dict[str, Any], canary: str = "healthy", seed: int = 0, **spec: Any) -> tuple[CanaryRollout, Any]:
    gw = SimGateway(*behaviours(["healthy", canary]), seed=seed, stable_version=s["v1"], canary_version=s["v2"])
    router = SimRouter(gw, s["registry"])
    defaults = {"steps": (25, 100), "min_requests": 30, "min_stable_requests": 30, "inconclusive_limit": 2}
    ro = CanaryRollout(s["registry"], router, RolloutSpec(**{**defaults, **spec}), "sim", actor="tests",
                       scrape=gw.snapshot)
    return ro, gw


def _window(ro: CanaryRollout, gw: SimGateway, p: RolloutProgress, seconds: float, rate: float = 50.0) -> Any:
    for _ in range(int(seconds / 2)):
        gw.run(2.0, rate)
        if ro.poll(p) is Outcome.FAIL:
            break
    return ro.finish_step(p)


def test_start_branches(setup: dict[str, Any]) -> None:
    s = setup
    ro, _ = _rollout(s)
    # Already champion: serving follows the registry, nothing else moves.
    p = ro.start(s["v1"], "re-run")
    assert (p.done, p.result) == (True, "already champion") and ro.router.routes == RouteStatus(s["v1"], None, 0)
    # A canary against the champion: state, alias, 0 % route, event with the spec.
    p = ro.start(s["v2"], "new model")
    assert not p.done and (p.version, p.stable, p.weight) == (s["v2"], s["v1"], 0)
    record = s["registry"].get_state(s["v2"])
    assert record.state is RolloutState.CANARY and s["registry"].aliases()["canary"] == s["v2"]
    assert ro.router.routes == RouteStatus(s["v1"], s["v2"], 0) and record.last_event("canary_started")
    # Rolled back: never canaried again.
    rollback(s["registry"], ro.router, s["v2"], "broken", None, "tests")
    with pytest.raises(RolloutStopped, match="already rolled back") as stopped:
        ro.start(s["v2"], "again")
    assert stopped.value.reason is EndReason.ROLLED_BACK


def test_a_canary_the_gateway_refuses_to_load_is_a_failed_canary(setup: dict[str, Any]) -> None:
    s = setup
    ro, _ = _rollout(s)
    ro.start(s["v1"], "serving follows the registry")

    def refuse_canary(stable: str, canary: str | None, canary_weight: int,
                      expected_generation: int | str | None = None) -> RouteStatus:
        if canary is not None:
            raise VersionRefused(f"gateway answered 409, version refused: ArtifactIntegrityError: {canary} changed")
        return SimRouter.set_routes(ro.router, stable, canary, canary_weight, expected_generation)

    ro.router.set_routes = refuse_canary  # type: ignore[method-assign]
    with pytest.raises(RolloutAborted, match="could not be served.*ArtifactIntegrityError") as aborted:
        ro.start(s["v2"], "tampered model")
    assert aborted.value.reason is EndReason.REFUSED
    record = s["registry"].get_state(s["v2"])
    assert record.state is RolloutState.ROLLED_BACK
    assert "ArtifactIntegrityError" in s["registry"].client.get_model_version(s["name"], s["v2"]).tags[TAG_ROLLBACK_REASON]
    assert s["registry"].aliases().get("canary") is None and s["registry"].aliases()["champion"] == s["v1"]
    assert ro.router.routes == RouteStatus(s["v1"], None, 0)


def test_first_model_is_bootstrapped(mlflow_server: Any, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    name = f"rollout-first-{next(_names)}"
    client = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
    registry = ModelRegistry(mlflow_server.url, name)
    v = _version(client, name, tmp_path)
    gw = SimGateway(*behaviours(["healthy", "healthy"]), seed=0, stable_version=v)
    ro = CanaryRollout(registry, SimRouter(gw, registry), RolloutSpec(), "sim", scrape=gw.snapshot)
    p = ro.start(v, "first")
    assert p.result == "bootstrapped as first champion" and registry.aliases() == {"champion": v}


def test_inconclusive_repeats_at_the_same_weight_then_stops_undecided_not_failed(setup: dict[str, Any]) -> None:
    s = setup
    ro, gw = _rollout(s, inconclusive_limit=1)
    p = ro.begin_step(ro.start(s["v2"], "thin traffic"))
    assert p.weight == 25
    step = _window(ro, gw, p, 4, rate=2.0)
    assert (step.action, step.verdict.outcome) == (Action.REPEAT, Outcome.INCONCLUSIVE)
    assert step.progress.outcomes == ["inconclusive"] and step.progress.repeat
    before = SeriesCountersOf(step.progress)
    p = ro.begin_step(step.progress)
    assert p.weight == 25 and ro.router.routes.canary_weight == 25  # the same weight: the window stretches
    gw.run(2.0, 2.0)
    ro.poll(p)
    assert SeriesCountersOf(p) > before  # this weight's counts keep adding up
    with pytest.raises(RolloutUndecided, match="undecided at 25%") as undecided:
        _window(ro, gw, p, 2, rate=2.0)
    assert undecided.value.reason is EndReason.UNDECIDED
    # Not a failure: traffic back on stable, the version still a canary, eligible for another try.
    assert ro.router.routes == RouteStatus(s["v1"], None, 0)
    record = s["registry"].get_state(s["v2"])
    assert record.state is RolloutState.CANARY and record.last_event("canary_undecided")
    assert s["registry"].aliases()["canary"] == s["v2"]
    again = ro.start(s["v2"], "second try")
    assert not again.done and ro.router.routes == RouteStatus(s["v1"], s["v2"], 0)


def SeriesCountersOf(p: RolloutProgress) -> float:  # noqa: N802 - reads like the counters it sums
    return float(p.window.get("canary", {}).get("requests", 0)) + float(p.window.get("stable", {}).get("requests", 0))


def test_healthy_canary_walks_to_100_percent_and_is_promoted(setup: dict[str, Any]) -> None:
    s = setup
    ro, gw = _rollout(s)
    p = ro.begin_step(ro.start(s["v2"], "healthy"))
    step = _window(ro, gw, p, 20)
    assert (step.action, step.verdict.outcome) == (Action.ADVANCE, Outcome.PASS), step.verdict.reasons
    p = ro.begin_step(step.progress)
    # The "100 %" step leaves the holdback (5 %) on stable: judged side by side like the other steps.
    assert p.weight == 100 and ro.router.routes == RouteStatus(s["v1"], s["v2"], 95)
    step = _window(ro, gw, p, 10)
    assert step.verdict.outcome is Outcome.PASS and step.progress.done, step.verdict.reasons
    assert step.verdict.stable.requests > 0  # stable served alongside the canary in the last step
    assert s["registry"].aliases() == {"champion": s["v2"], "previous": s["v1"]}
    # Promoted with the old champion held back on 5 %: the bake's concurrent control, recorded.
    assert ro.router.routes == RouteStatus(s["v2"], None, 0, holdback=s["v1"], holdback_weight=5)
    history = s["registry"].get_state(s["v2"]).history
    assert [e.get("event") for e in history].count("canary_step") == 2
    started = [e for e in history if e.get("event") == "holdback_started"]
    assert started and started[-1]["d"] == {"holdback": s["v1"], "holdback_weight": 5}
    # The bake ends: the holdback goes to 0, the old version is released, and the record says so.
    from mlcd.rollout.holdback import release

    done = release(ro.router, s["registry"], s["v2"], "bake complete", "tests")
    assert done.released and done.holdback == s["v1"] and ro.router.routes == RouteStatus(s["v2"], None, 0)
    assert ro.router.routes.holdback is None
    assert [e.get("event") for e in s["registry"].get_state(s["v2"]).history][-1] == "holdback_released"
    assert not release(ro.router, s["registry"], s["v2"], "again", "tests").released  # idempotent


def test_a_broken_canary_is_aborted_by_its_own_analysis(setup: dict[str, Any]) -> None:
    s = setup
    ro, gw = _rollout(s, canary="one_class", steps=(5, 100))
    p = ro.begin_step(ro.start(s["v2"], "broken"))
    with pytest.raises(RolloutAborted, match="class_distribution") as aborted:
        _window(ro, gw, p, 60)
    assert aborted.value.reason is EndReason.ANALYSIS_FAILED
    assert s["registry"].get_state(s["v2"]).state is RolloutState.ROLLED_BACK
    assert ro.router.routes == RouteStatus(s["v1"], None, 0)


def test_the_rollout_stops_when_the_guard_rolled_it_back_or_someone_promoted_it(setup: dict[str, Any]) -> None:
    s = setup
    ro, gw = _rollout(s)
    p = ro.begin_step(ro.start(s["v2"], "watched"))
    s["registry"].promote(s["v2"], "tests", "by hand")
    step = _window(ro, gw, p, 4)
    assert step.progress.done and step.progress.result == "promoted by someone else during the rollout"
    assert step.action is Action.ADVANCE
    # The next version: the guard rolls it back mid-window.
    v3 = _version(s["client"], s["name"], s["tmp"])
    ro2, gw2 = _rollout({**s, "v1": s["v2"], "v2": v3})
    p = ro2.begin_step(ro2.start(v3, "watched"))
    rollback(s["registry"], ro2.router, v3, "guard: breach", None, "mlcd_guard")
    with pytest.raises(RolloutStopped, match="rolled back during the rollout: guard: breach") as stopped:
        _window(ro2, gw2, p, 4)
    assert stopped.value.reason is EndReason.ROLLED_BACK
    with pytest.raises(RolloutStopped):
        ro2.begin_step(p)


def test_a_step_never_undoes_a_rollback_that_moved_traffic_meanwhile(setup: dict[str, Any]) -> None:
    s = setup
    ro, gw = _rollout(s, steps=(25, 50, 100))
    p = ro.begin_step(ro.start(s["v2"], "watched"))
    step = _window(ro, gw, p, 20)
    assert step.action is Action.ADVANCE
    # Traffic taken back by someone else after this step's record check: the routes no longer hold the canary.
    ro.router.set_routes(s["v1"], None, 0)
    with pytest.raises(RolloutStopped, match="no longer routed") as stopped:
        ro._move(step.progress, 50)
    assert stopped.value.reason is EndReason.ROUTES_MOVED
    assert ro.router.routes == RouteStatus(s["v1"], None, 0)
    # A move that lands between reading the routes and setting them: compare-and-set refuses the stale generation.
    ro.router.set_routes(s["v1"], s["v2"], 25)
    stale = ro.router.routes
    real_get = ro.router.get_routes
    ro.router.get_routes = lambda: stale  # type: ignore[method-assign]
    ro.router.set_routes(s["v1"], None, 0)  # the rollback wins the race
    with pytest.raises(RolloutStopped, match="routes moved while canary") as stopped:
        ro._move(step.progress, 50)
    assert stopped.value.reason is EndReason.ROUTES_MOVED
    ro.router.get_routes = real_get  # type: ignore[method-assign]
    assert ro.router.routes == RouteStatus(s["v1"], None, 0)


def test_a_rollback_with_mlflow_down_still_moves_traffic_in_seconds(setup: dict[str, Any]) -> None:
    from mlcd.mlflow_server import free_port

    s = setup
    ro, _ = _rollout(s)
    ro.begin_step(ro.start(s["v2"], "watched"))
    assert ro.router.routes == RouteStatus(s["v1"], s["v2"], 25)
    down = ModelRegistry(f"http://127.0.0.1:{free_port()}", s["name"])  # nothing listens there: MLflow is down
    started = time.monotonic()
    with pytest.raises(Exception):  # noqa: B017 - whatever MLflow raises: the record cannot be written
        rollback(down, ro.router, s["v2"], "guard: breach", None, "mlcd_guard")
    assert ro.router.routes == RouteStatus(s["v1"], None, 0)  # users are back on stable all the same
    assert time.monotonic() - started < 30  # MLflow's own retries would take minutes
    # MLflow back: the same call (a task retry) completes the record without moving traffic again.
    result = rollback(s["registry"], ro.router, s["v2"], "guard: breach", None, "mlcd_guard")
    assert result.restored == s["v1"] and s["registry"].get_state(s["v2"]).state is RolloutState.ROLLED_BACK


def test_rollback_moves_traffic_before_the_registry(setup: dict[str, Any]) -> None:
    s = setup
    ro, _ = _rollout(s)
    ro.start(s["v2"], "order")
    rollback(s["registry"], ro.router, s["v2"], "order check", None, "tests")
    routes, aliases_then = ro.router.moves[-1]
    assert routes == RouteStatus(s["v1"], None, 0)
    assert aliases_then.get("canary") == s["v2"]  # the registry had not moved yet when traffic did
    assert s["registry"].get_state(s["v2"]).state is RolloutState.ROLLED_BACK


def test_a_router_error_leaves_the_registry_unchanged(setup: dict[str, Any]) -> None:
    s = setup
    ro, _ = _rollout(s)
    ro.start(s["v2"], "router down")
    ro.router.fail = True
    aliases = s["registry"].aliases()
    with pytest.raises(RouterError):
        rollback(s["registry"], ro.router, s["v2"], "router down", None, "tests")
    assert s["registry"].aliases() == aliases and s["registry"].get_state(s["v2"]).state is RolloutState.CANARY
    ro.router.fail = False  # a retry starts over cleanly
    assert rollback(s["registry"], ro.router, s["v2"], "retry", None, "tests").state == "rolled_back"


def test_rolling_back_a_champion_in_its_bake_period_restores_previous(setup: dict[str, Any]) -> None:
    s = setup
    ro, _ = _rollout(s)
    ro.start(s["v2"], "bake")
    s["registry"].promote(s["v2"], "tests", "canary passed")
    ro.router.set_routes(s["v2"], None, 0)
    out = rollback(s["registry"], ro.router, s["v2"], "guard: champion failed in bake", None, "mlcd_guard")
    assert (out.version, out.restored, out.state) == (s["v2"], s["v1"], "rolled_back")
    assert ro.router.routes == RouteStatus(s["v1"], None, 0)
    assert s["registry"].aliases() == {"champion": s["v1"]}
    assert s["registry"].get_state(s["v1"]).state is RolloutState.CHAMPION


def test_a_rollback_that_crashed_midway_converges_when_run_again(setup: dict[str, Any]) -> None:
    s = setup
    ro, _ = _rollout(s)
    ro.start(s["v2"], "crash")
    s["registry"].promote(s["v2"], "tests", "canary passed")
    # The crash: traffic moved and the champion alias handed back, but the version not yet marked.
    ro.router.set_routes(s["v1"], None, 0)
    s["registry"].record_event(s["v2"], "rollback_started", {"restore": s["v1"]}, "mlcd_guard")
    s["registry"].set_alias("champion", s["v1"], expected=s["v2"])
    assert s["registry"].get_state(s["v2"]).state is RolloutState.CHAMPION
    out = rollback(s["registry"], ro.router, s["v2"], "guard: retry after crash", None, "mlcd_guard")
    assert (out.restored, out.state, out.already) == (s["v1"], "rolled_back", False)
    assert s["registry"].aliases().get("champion") == s["v1"] and ro.router.routes == RouteStatus(s["v1"], None, 0)
    assert s["registry"].get_state(s["v1"]).state is RolloutState.CHAMPION
    again = rollback(s["registry"], ro.router, s["v2"], "twice", None, "mlcd_guard")
    assert again.already
