"""The trigger form's schemas name exactly the fields the code reads (a drift between the two fails here)."""

from __future__ import annotations

import dataclasses

import pytest

pytestmark = pytest.mark.unit


def test_gate_schema_lists_gate_configs_fields() -> None:
    from mlcd.airflow.params import gate_schema
    from mlcd.evaluation.gate import GateConfig

    assert set(gate_schema()["properties"]) == {f.name for f in dataclasses.fields(GateConfig)}


def test_canary_spec_schema_checks_what_the_spec_checks() -> None:
    import jsonschema

    from mlcd.airflow.params import canary_spec_schema
    from mlcd.rollout.spec import RolloutSpec

    schema = canary_spec_schema()
    assert set(schema["properties"]) == {f.name for f in dataclasses.fields(RolloutSpec)}
    good = {"steps": [25, 50, 100], "analysis_window_s": 10, "min_requests": 30, "on_undecided": "hold",
            "metrics_blind_s": None, "thresholds": {"alpha": 0.01}}
    jsonschema.validate(good, schema)
    RolloutSpec.from_dict(good)
    for bad in ({"step": [10]}, {"on_undecided": "rollback"}, {"min_requests": 1.5}, {"steps": []}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
