"""The canary's analysis-window trigger: exact serialisation and one event carrying the progress back."""

from __future__ import annotations

import asyncio
import time

import pytest

from mlcd.airflow.canary import AnalysisWindowTrigger, CanaryRolloutOperator, WindowEvent

pytestmark = pytest.mark.unit


def test_serialize_is_exact() -> None:
    progress = {"version": "2", "stable": "1", "weight": 25, "window_started": 100.0}
    trigger = AnalysisWindowTrigger(progress=progress, window_s=4.0)
    assert trigger.serialize() == (
        "mlcd.airflow.canary.AnalysisWindowTrigger", {"progress": progress, "window_s": 4.0}
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
    op = CanaryRolloutOperator(task_id="canary", version="2", spec="{'min_requests': 15}")
    spec = op._spec()
    assert spec.analysis_window_s == 10 and spec.min_requests == 15
