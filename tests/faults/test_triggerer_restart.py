"""Drill: the triggerer restarts in the middle of a guard watch. The guard's trigger runs against a real gateway
under live traffic, is cancelled mid-run (what a triggerer restart does to it), and is re-created from the
kwargs stored at deferral: the checkpoint wins, so the sequential test continues (no reset: polls, looks and
evidence grow on) and no interval is judged twice or skipped (no double spend: the requests the engine judged
equal the gateway's counter difference over the whole watch)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.faults.kit import assert_healthy_ending, traffic

pytestmark = pytest.mark.faults


async def _run_for(trigger: Any, seconds: float) -> None:
    """Run the trigger's generator, then cancel it as a stopping triggerer does; it must not have decided."""
    task = asyncio.ensure_future(trigger.run().asend(None))
    done, _ = await asyncio.wait({task}, timeout=seconds)
    assert not done, f"the trigger decided instead of watching: {task.result().payload}"
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


def _canary_requests(state: dict[str, Any], version: str) -> float:
    from mlcd.rollout.metrics import snapshot_from_dict

    series = snapshot_from_dict(state["last"]).get(("canary", version))
    return series.requests if series is not None else 0.0


def test_triggerer_restarted_mid_watch(drill: Any, mlcd_home: Any) -> None:
    from mlcd.airflow.guard import CanaryHealthTrigger
    from mlcd.guard.watch import Guard, GuardConfig

    with traffic(drill.gateway.url, rate=40):
        first = Guard(GuardConfig(drill.gateway.url, poll_interval_s=0.3)).poll()
        assert first.state.phase == "canary" and first.state.version == drill.v2
        deferred = {"gateway_url": drill.gateway.url, "poll_interval_s": 0.3, "bake_s": 30.0, "grace_s": 30.0,
                    "state": first.state.to_dict(), "max_watch_s": 600.0}
        trigger = CanaryHealthTrigger(**deferred)
        asyncio.run(_run_for(trigger, 4.0))
        carried = trigger.serialize()[1]["state"]
        assert carried["polls"] >= 3 and carried["analysis"]["looks"] >= 1

        # The triggerer comes back and re-creates the trigger from what the database holds: the deferral's kwargs
        # (the first state). The checkpoint of the same guard run wins over them.
        restarted = CanaryHealthTrigger(**deferred)
        assert CanaryHealthTrigger(**trigger.serialize()[1]).serialize() == trigger.serialize()  # round trip
        asyncio.run(_run_for(restarted, 4.0))
        final = restarted.serialize()[1]["state"]

    assert final["started_at"] == first.state.started_at  # the same guard run, not a fresh one
    assert final["polls"] > carried["polls"] and final["look"] >= carried["look"]
    judged = final["analysis"]["canary"]["requests"] + final["analysis"]["alone"]["requests"]
    served = _canary_requests(final, drill.v2) - _canary_requests(first.state.to_dict(), drill.v2)
    assert served > 20 and judged == served, (judged, served)  # every interval once: none twice, none lost
    assert judged > carried["analysis"]["canary"]["requests"]
    # The healthy canary (same weights as stable) was never taken for a breach; traffic is as the rollout left it.
    assert_healthy_ending(drill.router, drill.registry, healthy={drill.v1, drill.v2})
