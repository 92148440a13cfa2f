"""Least privilege between processes (issue #23.3): each service ``make up`` starts, the demo's traffic and the
local trainer child hold only the secrets of their role. Real processes are started through the platform's own
``start`` and their environment is read back from ``/proc/<pid>/environ``, as the review did."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mlcd.envroles import (
    ADMIN_TOKEN,
    API_SECRET,
    FEEDBACK_TOKEN,
    GATEWAY_SECRET,
    JWT_SECRET,
    PASSWORDS_FILE,
    SECRETS,
    SIGNING_KEY,
    Role,
    env_for,
)

pytestmark = pytest.mark.unit

EXPECTED: dict[str, set[str]] = {
    "mlflow": set(),
    "airflow-api-server": {JWT_SECRET, API_SECRET, PASSWORDS_FILE, ADMIN_TOKEN},  # the mlcd page reads the routes
    "airflow-scheduler": {JWT_SECRET, ADMIN_TOKEN, SIGNING_KEY},
    "airflow-dag-processor": {JWT_SECRET},
    "airflow-triggerer": {JWT_SECRET, ADMIN_TOKEN},
    "gateway": {ADMIN_TOKEN, FEEDBACK_TOKEN, GATEWAY_SECRET, SIGNING_KEY},
}


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc/<pid>/environ (Linux)")
def test_each_service_make_up_starts_holds_only_its_roles_secrets(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from mlcd.platform import Ports, Service, down, platform_env, services, start
    from mlcd.settings import get_settings

    monkeypatch.setenv("MLCD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", "http://user:pw@127.0.0.1:5000")  # a Connection, with a password
    settings = get_settings()
    ports = Ports(airflow=18080, mlflow=15000, gateway=18000)
    env = platform_env(settings, ports)
    assert {ADMIN_TOKEN, FEEDBACK_TOKEN, GATEWAY_SECRET, SIGNING_KEY, JWT_SECRET, API_SECRET} <= set(env)
    names = [s.name for s in services(settings, ports)]
    assert sorted(names) == sorted(EXPECTED)
    pids: dict[str, int] = {}
    try:
        for name in names:  # the real start(), with a process that only sleeps in place of the service
            pids[name] = start(Service(name, [sys.executable, "-c", "import time; time.sleep(30)"]), settings, env)
        time.sleep(0.2)
        for name, pid in pids.items():
            seen = _environ(pid)
            held = {k for k in seen if k in SECRETS}
            assert held == EXPECTED[name], (name, sorted(held))
            for k in held:
                assert seen[k] == env[k]
            reads_connections = name.startswith("airflow-")
            assert ("AIRFLOW_CONN_MLFLOW_DEFAULT" in seen) is reads_connections, name
            assert seen["MLCD_HOME"] == str(settings.home)  # non-secret settings still reach everyone
    finally:
        down(settings)


def test_the_local_trainer_child_holds_mlflow_and_the_signing_key_only(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from mlcd.airflow.training import LocalTrainOperator

    out = tmp_path / "env.txt"
    for key in SECRETS:
        monkeypatch.setenv(key, f"value-of-{key}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    op: Any = LocalTrainOperator(task_id="train", arguments=[])
    script = ("import json, os, sys; open(sys.argv[1], 'w').write(json.dumps(dict(os.environ)));"
              "print('MLCD_RESULT ' + json.dumps({'run_id': 'r', 'model_uri': 'runs:/r/model'}))")
    op.command = lambda: [sys.executable, "-c", script, str(out)]
    try:
        op.execute({})
    except Exception:  # noqa: BLE001 - only the environment the child saw matters here
        pass
    import json

    seen = json.loads(out.read_text())
    held = {k for k in seen if k in SECRETS}
    assert held <= {SIGNING_KEY, "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_USERNAME"}
    assert SIGNING_KEY in held and ADMIN_TOKEN not in held and JWT_SECRET not in held
    assert seen["MLFLOW_TRACKING_URI"]


def test_unknown_processes_get_no_secret_and_the_traffic_only_its_feedback_token() -> None:
    env = {k: "x" for k in SECRETS} | {"AIRFLOW_CONN_X": "postgres://u:p@h/db", "PATH": os.environ.get("PATH", "")}
    assert set(env_for("something-new", env)) == {"PATH"}
    assert set(env_for(Role.TRAFFIC, env)) == {"PATH", FEEDBACK_TOKEN}
    assert set(env_for(Role.MLFLOW, env)) == {"PATH"}


def test_a_service_log_is_rotated_when_it_restarts_above_its_bound(tmp_path: Path) -> None:
    from mlcd.logfiles import rotate

    log = tmp_path / "gateway.log"
    assert not rotate(log)  # nothing there yet
    for run in range(5):
        log.write_bytes(bytes([65 + run]) * 2048)
        assert rotate(log, max_bytes=1024, keep=3)
    assert not log.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway.log.1", "gateway.log.2", "gateway.log.3"]
    assert (tmp_path / "gateway.log.1").read_bytes()[:1] == b"E" and (tmp_path / "gateway.log.3").read_bytes()[:1] == b"C"
    log.write_bytes(b"small")
    assert not rotate(log, max_bytes=1024) and log.read_bytes() == b"small"
