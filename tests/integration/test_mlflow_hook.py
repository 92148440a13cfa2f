"""MlflowHook: its own ``mlflow`` connection type found by Airflow through mlcd's provider entry point (what the
UI's Test button uses), and its token sent by MLflow's own client through mlcd's request-auth-provider plugin.

The entry points are read from pyproject.toml and installed as package metadata in a temporary folder for a fresh
interpreter, exactly as ``pip install -e .`` writes them, so the test checks the declaration the project ships.
MLflow's client talks to a recording endpoint on 127.0.0.1 that, like an authenticating proxy in front of MLflow,
answers 401 without the right bearer token.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.webhook import recording_server

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token"


def _installed_entry_points(tmp_path: Path) -> Path:
    """A ``mlcd`` dist-info holding pyproject.toml's entry points (what pip would install)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    dist = tmp_path / "site" / f"mlcd-{project['version']}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: mlcd\nVersion: {project['version']}\n")
    lines = []
    for group, entries in project["entry-points"].items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {target}" for name, target in entries.items()]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return dist.parent


_PROBE = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
from airflow.models.connection import Connection
from airflow.providers_manager import ProvidersManager
pm = ProvidersManager()
hook = pm.hooks.get("mlflow")
out = {
    "hook": hook.hook_class_name if hook else None,
    "behaviour": pm.field_behaviours.get("mlflow"),
    "widgets": sorted(k for k in pm.connection_form_widgets if k.startswith("extra__mlflow__")),
}
host, port = sys.argv[2].removeprefix("http://").split(":")

def ui_test(conn_id, password):
    # What the api-server's POST /connections/test does: the form's Connection under a transient id in the
    # environment, then Connection.test_connection(), which finds the hook by the connection type.
    conn = Connection(conn_id=conn_id, conn_type="mlflow", host=host, port=int(port), schema="http",
                      password=password)
    os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = conn.get_uri()
    try:
        return list(conn.test_connection())
    finally:
        del os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"]

out["test_ok"] = ui_test("mlflow_ok", sys.argv[3])
out["test_bad"] = ui_test("mlflow_bad", "wrong")
# The same settings as an `http` Connection (the former type) still resolve.
from mlcd.airflow.hooks import connection_from_airflow
legacy = connection_from_airflow(Connection(conn_id="m", conn_type="http", host="mlflow.ml.svc", port=5000))
out["legacy"] = legacy.tracking_uri
out["token_in_env"] = any(sys.argv[3] in v for v in os.environ.values())  # after the transient ids are gone
print(json.dumps(out))
"""


def _mlflow_behind_auth(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
    if headers.get("authorization") != f"Bearer {TOKEN}":
        return 401, {"error_code": "UNAUTHENTICATED", "message": "bearer token required"}
    if path.startswith("/api/2.0/mlflow/registered-models/search"):
        return 200, {"registered_models": []}
    return 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": path}


def test_ui_test_button_reaches_the_hook_and_the_token_travels_by_the_auth_plugin(tmp_path: Path) -> None:
    site = _installed_entry_points(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_AUTH"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "include"), str(REPO)])
    env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    with recording_server(_mlflow_behind_auth) as server:
        run = subprocess.run([sys.executable, "-c", _PROBE, str(site), server.url, TOKEN], env=env,
                             capture_output=True, text=True, timeout=240)
        assert run.returncode == 0, run.stderr[-3000:]
        out = json.loads(run.stdout.strip().splitlines()[-1])
        seen = [r["headers"].get("authorization") for r in server.requests]
    assert out["hook"] == "mlcd.airflow.hooks.MlflowHook"
    assert out["behaviour"]["hidden_fields"] == ["login"]
    assert out["behaviour"]["relabeling"]["password"] == "Token"
    assert out["widgets"] == ["extra__mlflow__tracking_uri"]
    assert out["test_ok"] == [True, f"MLflow at {server.url} answered"]
    assert out["test_bad"][0] is False and server.url in out["test_bad"][1]
    assert f"Bearer {TOKEN}" in seen and "Bearer wrong" in seen
    assert out["legacy"] == "http://mlflow.ml.svc:5000"
    assert out["token_in_env"] is False


def test_a_token_goes_only_to_its_own_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlcd import mlflow_auth

    monkeypatch.setattr(mlflow_auth, "_TOKENS", {})
    monkeypatch.delenv("MLFLOW_TRACKING_AUTH", raising=False)
    mlflow_auth.register_token("http://mlflow-a:5000/", "token-a")
    assert os.environ["MLFLOW_TRACKING_AUTH"] == "mlcd"
    assert mlflow_auth.token_for("http://mlflow-a:5000/api/2.0/mlflow/experiments/get") == "token-a"
    assert mlflow_auth.token_for("http://mlflow-a:50001/api") is None  # a prefix, not the same server
    assert mlflow_auth.token_for("http://mlflow-b:5000/api") is None
    assert "token-a" not in "".join(os.environ.values())
