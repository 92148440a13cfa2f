"""Least privilege on one machine: secrets private from their first byte, pid files that cannot name a stranger,
and model builders only from an allow-list.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    from mlcd.settings import get_settings

    monkeypatch.setenv("MLCD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLCD_ADMIN_TOKEN", raising=False)
    return get_settings()


# --- 1. secrets are 600 from the start --------------------------------------------------------------------------


def test_every_secret_is_private_from_its_first_byte(settings, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Under a permissive umask no secret is ever created readable by others, the admin password included.

    chmod after writing leaves a window where the file is readable: any chmod call is recorded and fails the test.
    """
    from mlcd.platform import Ports, airflow_password, platform_env

    chmods: list[str] = []
    monkeypatch.setattr(Path, "chmod", lambda self, mode, **kw: chmods.append(str(self)))
    monkeypatch.setattr(os, "chmod", lambda path, mode, **kw: chmods.append(str(path)))
    old = os.umask(0o022)
    try:
        env = platform_env(settings, Ports(airflow=18080, mlflow=15000, gateway=18000))
    finally:
        os.umask(old)
    run = settings.home / "run"
    secrets = ["jwt_secret", "api_secret", "gateway_admin_token", "airflow_passwords.json"]
    for name in secrets:
        path = run / name
        assert path.exists(), f"{name} was not created before the services start"
        assert oct(path.stat().st_mode & 0o777) == oct(0o600), name
    assert oct(run.stat().st_mode & 0o777) == oct(0o700)
    assert not [c for c in chmods if Path(c).name in secrets], chmods
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] == str(run / "airflow_passwords.json")
    password = airflow_password(settings)
    assert password and len(password) >= 16
    # Created once: a second start keeps the same password and secrets.
    again = platform_env(settings, Ports(airflow=18080, mlflow=15000, gateway=18000))
    assert airflow_password(settings) == password
    assert again["AIRFLOW__API_AUTH__JWT_SECRET"] == env["AIRFLOW__API_AUTH__JWT_SECRET"]


def test_a_secret_an_older_version_left_readable_is_tightened(settings) -> None:  # type: ignore[no-untyped-def]
    from mlcd.platform import Ports, platform_env

    run = settings.home / "run"
    run.mkdir(parents=True)
    legacy = run / "airflow_passwords.json"
    legacy.write_text(json.dumps({"admin": "old-password-123"}))
    legacy.chmod(0o644)
    platform_env(settings, Ports(airflow=18080, mlflow=15000, gateway=18000))
    assert legacy.stat().st_mode & 0o777 == 0o600
    assert json.loads(legacy.read_text()) == {"admin": "old-password-123"}


# --- 3. `mlcd down` signals only the process it started ---------------------------------------------------------


def _repoint(pid_file: Path, pid: int) -> None:
    """What pid reuse does to a pid file: the number now names another process, the rest is unchanged."""
    text = pid_file.read_text()
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if isinstance(record, dict):
        record["pid"] = pid
        pid_file.write_text(json.dumps(record))
    else:
        pid_file.write_text(str(pid))


def test_down_does_not_signal_a_process_that_reused_the_pid(settings) -> None:  # type: ignore[no-untyped-def]
    from mlcd.platform import Service, running_pid, start

    (settings.home / "run").mkdir(parents=True)  # as `up` makes it
    service = Service("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])
    pid = start(service, settings, dict(os.environ))
    assert running_pid(settings, "sleeper") == pid
    time.sleep(0.05)  # start times count 10 ms ticks: a reused pid belongs to a process started after ours died
    os.killpg(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    # The service is gone; its pid now belongs to someone else, started after it (as pid reuse does).
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        _check_reused_pid_is_left_alone(settings, stranger)
    finally:
        if stranger.poll() is None:
            stranger.kill()
        stranger.wait(10)


def _check_reused_pid_is_left_alone(settings, stranger: subprocess.Popen[bytes]) -> None:  # type: ignore[no-untyped-def]
    from mlcd.platform import down, running_pid

    _repoint(settings.home / "run" / "sleeper.pid", stranger.pid)
    assert running_pid(settings, "sleeper") is None
    assert down(settings, timeout=3) == []
    time.sleep(0.2)
    assert stranger.poll() is None, "mlcd down killed a process it did not start"
    assert not (settings.home / "run" / "sleeper.pid").exists()


def test_down_still_stops_what_it_started(settings) -> None:  # type: ignore[no-untyped-def]
    from mlcd.platform import Service, down, running_pid, start

    service = Service("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])
    pid = start(service, settings, dict(os.environ))
    record = json.loads((settings.home / "run" / "sleeper.pid").read_text())
    assert record["pid"] == pid and isinstance(record["start_ticks"], int) and "time.sleep(60)" in record["cmdline"][-1]
    assert (settings.home / "run" / "sleeper.pid").stat().st_mode & 0o777 == 0o600
    assert down(settings, timeout=10) == ["sleeper"]
    assert running_pid(settings, "sleeper") is None
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped: it really ended


# --- 4. model builders from an allow-list -----------------------------------------------------------------------


def _evil_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A module whose import alone leaves a mark: what the old ``model`` param would run in the trainer."""
    marker = tmp_path / "imported"
    (tmp_path / "mlcd_evil_builder.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\ndef build():\n    return None\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return marker


def test_a_model_outside_the_allow_list_is_refused_before_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlcd.training.model import get_builder

    marker = _evil_module(tmp_path, monkeypatch)
    for spec in ("mlcd_evil_builder:build", "os:getcwd", "subprocess:Popen"):
        with pytest.raises(ValueError, match="not allowed") as info:
            get_builder(spec)
        assert "\n" not in str(info.value) and "mlcd.models" in str(info.value)
    assert not marker.exists() and "mlcd_evil_builder" not in sys.modules


def test_built_ins_and_installed_entry_points_are_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deployment adds a model by installing a package that declares an ``mlcd.models`` entry point."""
    from mlcd.training.model import ModelBuilder, ReferenceCNN, allowed_builders, get_builder

    assert isinstance(get_builder("cnn"), ReferenceCNN)
    assert get_builder("mlcd.training.faulty:BlindModel").name == "blind-model"
    (tmp_path / "acme_models.py").write_text(
        "from mlcd.training.model import ReferenceCNN\n"
        "def wide():\n    return ReferenceCNN(name='acme-wide', dense_units=128)\n"
    )
    dist = tmp_path / "acme_models-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-models\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[mlcd.models]\nacme-wide = acme_models:wide\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert allowed_builders()["acme-wide"] == "acme_models:wide"
    by_name, by_value = get_builder("acme-wide"), get_builder("acme_models:wide")
    assert isinstance(by_name, ModelBuilder) and by_name.name == "acme-wide" and by_value.params() == by_name.params()


def test_the_trainer_refuses_a_model_off_the_list_with_one_line(tmp_path: Path) -> None:
    """The process boundary: exit 1, the reason as the last stderr line, nothing imported or trained."""
    from mlcd.training.contract import ERROR_PREFIX

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-m", "mlcd.training", "--snapshot", str(tmp_path), "--model", "os:system"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(ERROR_PREFIX) and "not allowed" in last, proc.stderr[-2000:]
