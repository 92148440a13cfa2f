"""Drill: the gateway is killed (SIGKILL) and restarted in the middle of a canary rollout. It comes back with the
persisted routes at their generation before it answers; the canary step goes on from there (the outage counted
as blind time, shorter than the fail-closed window); a rollback that lands afterwards stops the rollout, and no
later step (nor a promotion) brings the canary back."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.faults.kit import assert_healthy_ending, traffic, wait_for

pytestmark = pytest.mark.faults


def test_gateway_killed_and_restarted_mid_canary(drill: Any) -> None:
    from mlcd.rollout.actions import rollback
    from mlcd.rollout.canary import CanaryRollout, RolloutProgress, RolloutStopped
    from mlcd.rollout.spec import Outcome, RolloutSpec, StepVerdict

    spec = RolloutSpec(steps=(25, 50, 100), analysis_window_s=1, poll_interval_s=0.5, min_requests=5,
                       min_stable_requests=5, metrics_blind_s=20)
    rollout = CanaryRollout(drill.registry, drill.router, spec, drill.gateway.url, actor="drill")
    with traffic(drill.gateway.url) as seen:
        p = rollout.begin_step(RolloutProgress(drill.v2, drill.v1))  # as after start(): canary routed at 25 %
        assert p.weight == 25
        gen = drill.router.get_routes().generation
        time.sleep(1.0)

        drill.gateway.kill()
        assert rollout.poll(p) is Outcome.INCONCLUSIVE and p.blind_since is not None  # unreadable: not judged
        drill.gateway.start()
        first = drill.gateway.first_answer
        assert first is not None and (first["stable"], first["canary"], first["canary_weight"], first["generation"]) \
            == (drill.v1, drill.v2, 25, gen)  # the persisted routes, before the first answer
        # Readable again (the canary's series back with its first request after the restart) well within the
        # fail-closed window: nothing paused.
        wait_for(lambda: rollout.poll(p) is not None and p.blind_since is None, timeout=15, what="metrics usable")
        assert not rollout.paused and drill.router.get_routes().canary_weight == 25

        # The step continues from the restarted gateway's generation (compare-and-set succeeds).
        result = rollout.finish_step(p)
        p = rollout.begin_step(result.progress)
        routes = drill.router.get_routes()
        assert routes.canary == drill.v2 and routes.canary_weight == p.weight in (25, 50)
        assert routes.generation == gen + 1

        # A rollback lands (the guard): the rollout must stop and leave traffic where the rollback put it.
        rollback(drill.registry, drill.router, drill.v2, "drill: guard breach", {"manual": True}, "drill-guard")
        with pytest.raises(RolloutStopped):
            rollout.finish_step(p)
        with pytest.raises(RolloutStopped):
            rollout._move(p, 50)  # a step that read the routes before the rollback loses the race
        p.weight = 100
        with pytest.raises(RolloutStopped):
            rollout._promote(p, StepVerdict(Outcome.PASS, ("drill",)))
        time.sleep(1.0)
        before, stable_before = seen.get(drill.v2, 0), seen.get(drill.v1, 0)
        wait_for(lambda: seen.get(drill.v1, 0) > stable_before + 10, what="stable answers")
        assert seen.get(drill.v2, 0) == before  # no resurrection

    routes = drill.router.get_routes()
    assert (routes.stable, routes.canary) == (drill.v1, None)
    assert drill.registry.get_state(drill.v2).state.value == "rolled_back"
    assert_healthy_ending(drill.router, drill.registry, healthy={drill.v1}, bad={drill.v2})
