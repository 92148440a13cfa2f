"""Canary and rollback behaviour the step-by-step tests did not pin down, found by the mutation run (issue 18).

Same setting as tests/integration/test_canary_rollout.py (whose fixtures this file uses): the REAL registry on the
session's MLflow server, the gateway's real metrics through the rollout's ``scrape`` seam. Each test names the
behaviour it checks.
"""

from __future__ import annotations

from typing import Any

import pytest

from mlcd.registry.errors import RolloutError
from mlcd.registry.state import RolloutState
from mlcd.registry.tags import TAG_ROLLBACK_CHECKS, TAG_ROLLED_BACK_BY
from mlcd.rollout.actions import default_version, promote, rollback, set_paused
from mlcd.rollout.canary import RolloutAborted, RolloutStopped, RolloutUndecided, run_rollout
from mlcd.rollout.router import RouteStatus
from mlcd.rollout.spec import Action, Outcome
from tests.integration import test_canary_rollout as _base

pytestmark = pytest.mark.integration

setup = _base.setup  # the same fixture: champion 1, registered 2, a simulated gateway serving 1
_rollout, _window = _base._rollout, _base._window


def test_run_rollout_waits_exactly_one_window_per_step_and_promotes_a_healthy_canary(setup: dict[str, Any]) -> None:
    s = setup
    ro, gw = _rollout(s, steps=(50, 100), analysis_window_s=10.0, poll_interval_s=3.0)
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # simulated time: the gateway serves traffic while the rollout waits
        slept.append(seconds)
        gw.run(seconds, 60.0)

    p = run_rollout(ro, s["v2"], "walk", sleep=sleep)
    assert p.done and p.result == "promoted to champion after 2 windows"
    assert slept == [3.0, 3.0, 3.0, 1.0] * 2  # three polls and the rest of the 10 s window, at each step
    assert s["registry"].aliases()["champion"] == s["v2"]
    assert ro.router.routes == RouteStatus(s["v2"], None, 0, holdback=s["v1"], holdback_weight=5)
    assert s["registry"].get_state(s["v2"]).state is RolloutState.CHAMPION


def test_an_undecided_rollout_that_holds_keeps_its_weight_and_the_version_a_canary(setup: dict[str, Any]) -> None:
    s = setup
    ro, gw = _rollout(s, inconclusive_limit=0, on_undecided="hold")
    p = ro.begin_step(ro.start(s["v2"], "thin traffic"))
    with pytest.raises(RolloutUndecided, match="weight held at 25%") as undecided:
        _window(ro, gw, p, 4, rate=2.0)
    assert "eligible for another rollout" in str(undecided.value)
    assert ro.router.routes == RouteStatus(s["v1"], s["v2"], 25)  # held, not retreated
    record = s["registry"].get_state(s["v2"])
    assert record.state is RolloutState.CANARY
    assert record.last_event("canary_undecided")["d"]["weight"] == 25


def test_an_undecided_rollout_that_retreats_puts_every_request_back_on_stable(setup: dict[str, Any]) -> None:
    s = setup
    ro, gw = _rollout(s, inconclusive_limit=0)
    p = ro.begin_step(ro.start(s["v2"], "thin traffic"))
    with pytest.raises(RolloutUndecided, match="traffic back on stable"):
        _window(ro, gw, p, 4, rate=2.0)
    assert ro.router.routes == RouteStatus(s["v1"], None, 0)
    assert s["registry"].get_state(s["v2"]).state is RolloutState.CANARY


def test_an_aborted_canary_is_rolled_back_with_its_failed_checks_and_every_outcome(setup: dict[str, Any]) -> None:
    s = setup
    ro, gw = _rollout(s, "one_class")
    p = ro.begin_step(ro.start(s["v2"], "broken"))
    with pytest.raises(RolloutAborted, match="canary failed its analysis at 25%"):
        _window(ro, gw, p, 60)
    assert p.done and p.result.startswith("canary failed its analysis at 25%")
    assert ro.router.routes == RouteStatus(s["v1"], None, 0)
    tags = s["registry"].client.get_model_version(s["name"], s["v2"]).tags
    assert tags[TAG_ROLLED_BACK_BY] == "tests" and "class_distribution" in tags[TAG_ROLLBACK_CHECKS]
    step = s["registry"].get_state(s["v2"]).last_event("canary_step")
    assert step["d"]["weight"] == 25 and step["d"]["action"] == "abort_failed" and step["d"]["outcome"] == "fail"


def test_a_paused_canary_holds_its_weight_without_judging_and_resumes_where_it_was(setup: dict[str, Any]) -> None:
    s = setup
    ro, gw = _rollout(s)
    p = ro.begin_step(ro.start(s["v2"], "pause"))
    set_paused(s["registry"], s["v2"], True, "looking at a dashboard", "cli:ops")
    gw.run(10.0, 50.0)
    held = ro.finish_step(p)
    assert (held.action, held.verdict.outcome) == (Action.REPEAT, Outcome.INCONCLUSIVE)
    assert held.progress.outcomes == []  # a paused window is not judged
    p = ro.begin_step(held.progress)
    assert p.weight == 25 and ro.router.routes.canary_weight == 25
    set_paused(s["registry"], s["v2"], False, "done", "cli:ops")
    step = _window(ro, gw, ro.begin_step(_window(ro, gw, p, 60).progress), 60)
    assert step.progress.done and s["registry"].aliases()["champion"] == s["v2"]
    with pytest.raises(ValueError, match="only a canary in rollout can be paused"):
        set_paused(s["registry"], s["v2"], True, "too late", "cli:ops")


def test_a_step_stops_when_someone_else_routed_traffic_away(setup: dict[str, Any]) -> None:
    s = setup
    ro, _ = _rollout(s)
    p = ro.start(s["v2"], "moved")
    ro.router.set_routes(s["v1"], None, 0)  # a person moved traffic by hand
    with pytest.raises(RolloutStopped, match="no longer routed"):
        ro.begin_step(p)
    assert ro.router.routes == RouteStatus(s["v1"], None, 0)


def test_a_rolled_back_version_is_rolled_back_again_only_in_serving(setup: dict[str, Any]) -> None:
    s = setup
    ro, _ = _rollout(s)
    ro.start(s["v2"], "twice")
    first = rollback(s["registry"], ro.router, s["v2"], "broken", {"checks": []}, "tests")
    assert (first.restored, first.already, first.state) == (s["v1"], False, "rolled_back")
    ro.router.set_routes(s["v1"], s["v2"], 5)  # serving drifted back onto it (a stale step, a person)
    again = rollback(s["registry"], ro.router, s["v2"], "again", None, "tests")
    assert (again.restored, again.already) == (s["v1"], True)
    assert ro.router.routes == RouteStatus(s["v1"], None, 0)  # the record says rolled back: serving agrees


def test_only_a_canary_or_a_champion_can_be_rolled_back(setup: dict[str, Any]) -> None:
    s = setup
    ro, _ = _rollout(s)
    ro.start(s["v1"], "serving follows the registry")
    with pytest.raises(RolloutError, match="only a canary or a champion"):
        rollback(s["registry"], ro.router, s["v2"], "registered only", None, "tests")
    with pytest.raises(RolloutError, match="no previous version"):
        rollback(s["registry"], ro.router, s["v1"], "the first champion", None, "tests")
    assert ro.router.routes == RouteStatus(s["v1"], None, 0)


def test_a_manual_promotion_serves_the_version_alone_and_the_default_version_is_the_canary(
    setup: dict[str, Any]
) -> None:
    s = setup
    ro, _ = _rollout(s)
    # Moving traffic or the champion names its version; only holding a canary has a default (the canary).
    with pytest.raises(ValueError, match=r"promote needs an explicit version \(there is no canary\)"):
        default_version(s["registry"], "promote")
    with pytest.raises(ValueError, match=r"rollback needs an explicit version \(there is no canary\)"):
        default_version(s["registry"], "rollback")  # never "the champion" by default
    with pytest.raises(ValueError, match="no canary to pause"):
        default_version(s["registry"], "pause")
    ro.start(s["v2"], "manual")
    assert default_version(s["registry"], "pause") == s["v2"] == default_version(s["registry"], "resume")
    with pytest.raises(ValueError, match=f"the canary is version {s['v2']}"):
        default_version(s["registry"], "rollback")
    out = promote(s["registry"], ro.router, s["v2"], "looks fine", "cli:ops")
    assert out == {"version": s["v2"], "state": "champion", "reason": "looks fine"}
    assert ro.router.routes == RouteStatus(s["v2"], None, 0)
    assert s["registry"].aliases() == {"champion": s["v2"], "previous": s["v1"]}
