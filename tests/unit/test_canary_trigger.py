"""The canary's analysis-window trigger: exact serialisation and one event carrying the progress back."""

from __future__ import annotations

import asyncio
import time

import pytest
from airflow.sdk.exceptions import AirflowException

from mlcd.airflow.canary import AnalysisWindowTrigger, CanaryRolloutOperator, WindowEvent

pytestmark = pytest.mark.unit


def test_serialize_is_exact() -> None:
    progress = {"version": "2", "stable": "1", "weight": 25, "window_started": 100.0}
    trigger = AnalysisWindowTrigger(progress=progress, window_s=4.0)
    assert trigger.serialize() == (
        "mlcd.airflow.canary.AnalysisWindowTrigger",
        {"progress": progress, "window_s": 4.0, "gateway_url": None, "spec": {}},
    )


def test_run_waits_out_the_window_and_returns_the_progress() -> None:
    progress = {"version": "2", "weight": 25, "window_started": time.time()}
    trigger = AnalysisWindowTrigger(progress=progress, window_s=0.3)

    async def first_event():  # type: ignore[no-untyped-def]
        return await trigger.run().asend(None)

    start = time.monotonic()
    event = asyncio.run(first_event())
    assert time.monotonic() - start >= 0.25
    assert event.payload == {"status": WindowEvent.ELAPSED.value, "progress": progress}


def test_spec_layers_deploy_defaults_under_run_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLCD_CANARY_SPEC", '{"analysis_window_s": 10, "min_requests": 40}')
    op = CanaryRolloutOperator(task_id="canary", version="2", spec='{"min_requests": 15}')
    spec = op._spec()
    assert spec.analysis_window_s == 10 and spec.min_requests == 15
    # A dict param arrives natively as a dict (render_template_as_native_obj) or as JSON text.
    native = CanaryRolloutOperator(task_id="canary", version="2", spec={"min_requests": 12, "on_undecided": "hold"})
    assert native._spec().min_requests == 12 and native._spec().on_undecided == "hold"
    op.spec = "{'min_requests': 15}"  # a Python literal is no longer parsed: one clear line
    with pytest.raises(AirflowException, match="canary spec must be a JSON object"):
        op._spec()
    op.spec = "[1, 2]"
    with pytest.raises(AirflowException, match="canary spec must be a mapping, got list"):
        op._spec()


def test_the_window_trigger_polls_the_engine_and_ends_early_on_a_failure() -> None:
    """A one-class canary behind a real /metrics endpoint on 127.0.0.1: the window ends long before its 60 s."""

    from mlcd.rollout.canary import RolloutProgress
    from mlcd.rollout.metrics import snapshot_to_dict
    from mlcd.rollout.spec import RolloutSpec
    from tests.gatewaysim import SimGateway, behaviours, serve_metrics

    gw = SimGateway(*behaviours(["healthy", "one_class"]), seed=3)
    gw.set_routes("1", "2", 25)

    def scrape() -> bytes:
        gw.run(1.0, 100.0)  # one second of traffic per scrape
        return gw.text().encode()

    with serve_metrics(scrape) as url:
        spec = RolloutSpec(analysis_window_s=60, poll_interval_s=0.05)
        p = RolloutProgress("2", "1", weight=25, window_started=time.time(),
                            last=snapshot_to_dict(gw.snapshot()))
        trigger = AnalysisWindowTrigger(progress=p.to_dict(), window_s=60,
                                        gateway_url=url, spec=spec.to_dict())
        start = time.monotonic()
        event = asyncio.run(asyncio.wait_for(trigger.run().asend(None), timeout=30))
    assert time.monotonic() - start < 30
    progress = event.payload["progress"]
    assert progress["verdict"]["outcome"] == "fail"
    assert progress["analysis"]["looks"] >= 1
    assert trigger.serialize()[1]["progress"] == progress  # a restart carries the engine's state
