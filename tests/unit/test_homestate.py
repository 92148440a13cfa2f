"""Settings saved with a state folder, and the platform's address and admin token found from ``MLCD_HOME`` alone."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "state"
    home.mkdir()
    monkeypatch.setenv("MLCD_HOME", str(home))
    for var in ("MLCD_RETRAIN_DEFAULTS", "MLCD_GUARD_BAKE_S", "MLCD_CANARY_SPEC", "MLFLOW_TRACKING_URI",
                "MLCD_MLFLOW_URI", "MLCD_GATEWAY_URL", "MLCD_ADMIN_TOKEN", "MLCD_GUARD_THRESHOLDS"):
        monkeypatch.delenv(var, raising=False)
    return home


def test_saved_settings_apply_under_the_environment(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlcd.homestate import apply_saved_settings, save_settings
    from mlcd.settings import get_settings

    assert get_settings().retrain_defaults == {} and get_settings().guard_bake_s == 300.0
    save_settings(home, {"MLCD_RETRAIN_DEFAULTS": json.dumps({"epochs": 10}), "MLCD_GUARD_BAKE_S": "30"})
    s = get_settings()
    assert s.retrain_defaults == {"epochs": 10} and s.guard_bake_s == 30.0
    # An explicit environment variable wins over the state's own setting.
    monkeypatch.setenv("MLCD_GUARD_BAKE_S", "45")
    assert get_settings().guard_bake_s == 45.0
    env = {"MLCD_GUARD_BAKE_S": "45"}
    assert apply_saved_settings(env, home) == {"MLCD_RETRAIN_DEFAULTS": '{"epochs": 10}'}
    assert env["MLCD_GUARD_BAKE_S"] == "45"
    # Another home has none of them.
    other = home.parent / "other"
    other.mkdir()
    monkeypatch.setenv("MLCD_HOME", str(other))
    monkeypatch.delenv("MLCD_GUARD_BAKE_S")
    assert get_settings().retrain_defaults == {} and get_settings().guard_bake_s == 300.0


def test_a_saved_typo_is_refused_as_the_environment_would_be(home: Path) -> None:
    from mlcd.homestate import save_settings
    from mlcd.settings import get_settings

    save_settings(home, {"MLCD_RETRAIN_DEFAULTS": json.dumps({"epoch": 10})})
    with pytest.raises(ValueError, match="unknown keys"):
        get_settings()
    with pytest.raises(ValueError, match="not a setting saved with a state: MLCD_ADMIN_TOKEN"):
        save_settings(home, {"MLCD_ADMIN_TOKEN": "secret"})  # secrets stay in run/, never in settings.json


def test_the_running_platform_and_its_token_are_found_from_the_home_alone(home: Path) -> None:
    from mlcd.homestate import forget_platform, record_platform
    from mlcd.platform import write_private
    from mlcd.rollout.router import LocalGatewayRouter, router_from_settings
    from mlcd.settings import get_settings

    assert get_settings().admin_token is None and get_settings().gateway_url == "http://127.0.0.1:8000"
    write_private(home / "run" / "gateway_admin_token", "tok-from-make-up\n")
    path = record_platform(home, {"airflow": "http://127.0.0.1:18080", "mlflow": "http://127.0.0.1:15000",
                                  "gateway": "http://127.0.0.1:18000", "login": "admin / pw"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and "pw" not in path.read_text()
    s = get_settings()
    assert (s.admin_token, s.tracking_uri, s.gateway_url) == (
        "tok-from-make-up", "http://127.0.0.1:15000", "http://127.0.0.1:18000")
    router = router_from_settings()
    assert isinstance(router, LocalGatewayRouter)
    forget_platform(home)  # `make down`: the address is gone, the token stays for the next `make up`
    assert get_settings().gateway_url == "http://127.0.0.1:8000" and get_settings().admin_token == "tok-from-make-up"
