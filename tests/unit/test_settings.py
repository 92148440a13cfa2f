"""Deploy-wide switches read in one place: the retrain defaults and the ledger URL."""

from __future__ import annotations

import json

import pytest

from mlcd.settings import load_settings, parse_guard_thresholds, parse_retrain_defaults

pytestmark = pytest.mark.unit


def test_retrain_defaults_are_parsed_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLCD_RETRAIN_DEFAULTS", json.dumps({"epochs": 10, "gate": {"accuracy_floor": 0.8}}))
    assert load_settings().retrain_defaults == {"epochs": 10, "gate": {"accuracy_floor": 0.8}}
    monkeypatch.delenv("MLCD_RETRAIN_DEFAULTS")
    assert load_settings().retrain_defaults == {}
    with pytest.raises(ValueError, match=r"unknown keys \['epoch'\]"):
        parse_retrain_defaults('{"epoch": 3}')
    with pytest.raises(ValueError, match="not JSON"):
        parse_retrain_defaults("{epochs: 3}")
    with pytest.raises(ValueError, match="JSON object"):
        parse_retrain_defaults("[3]")


def test_the_lease_uses_the_configured_ledger_url(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from mlcd.registry.lease import ledger_url

    monkeypatch.setenv("MLCD_HOME", str(tmp_path))
    monkeypatch.delenv("MLCD_LEDGER_URL", raising=False)
    assert ledger_url() == f"sqlite:///{tmp_path.resolve()}/ledger.sqlite"
    monkeypatch.setenv("MLCD_LEDGER_URL", "postgresql+psycopg2://mlcd@127.0.0.1:5432/mlcd")
    assert ledger_url() == "postgresql+psycopg2://mlcd@127.0.0.1:5432/mlcd"
    assert ledger_url("sqlite:///elsewhere.sqlite") == "sqlite:///elsewhere.sqlite"


def test_guard_threshold_defaults_are_parsed_and_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlcd.rollout.analysis import GuardThresholds

    monkeypatch.setenv("MLCD_GUARD_THRESHOLDS", json.dumps({"min_class_shift": 0.2}))
    loaded = load_settings().guard_thresholds
    assert loaded == {"min_class_shift": 0.2}
    assert GuardThresholds.from_dict(loaded).min_class_shift == 0.2  # what the guard builds from it
    monkeypatch.delenv("MLCD_GUARD_THRESHOLDS")
    assert load_settings().guard_thresholds == {}
    for bad, why in (("{", "not JSON"), ("[1]", "JSON object")):
        with pytest.raises(ValueError, match=why):
            parse_guard_thresholds(bad)
