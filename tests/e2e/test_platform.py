"""`make up` / `make down` for real: Airflow's parts, MLflow and the gateway on loopback, and the mlcd page.

Starts the whole platform once (about a minute) on free ports with its own MLCD_HOME and stops it afterwards.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlcd.mlflow_server import free_port

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from mlcd.platform import AirflowApi, Ports, airflow_password, down, up
    from mlcd.settings import get_settings

    home = tmp_path_factory.mktemp("platform-home")
    saved = {k: os.environ.get(k) for k in ("MLCD_HOME", "AIRFLOW_HOME", "MLCD_ADMIN_TOKEN")}
    os.environ.update({"MLCD_HOME": str(home), "AIRFLOW_HOME": str(home / "airflow"),
                       "MLCD_ADMIN_TOKEN": "platform-test-token-0123456789"})
    settings = get_settings()
    ports = Ports(airflow=free_port(), mlflow=free_port(), gateway=free_port())
    try:
        urls = up(settings, ports)
        api = AirflowApi(urls["airflow"], "admin", airflow_password(settings) or "")
        yield {"settings": settings, "ports": ports, "urls": urls, "api": api}
    finally:
        down(settings)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _get(url: str, token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def test_every_service_answers_on_loopback_only(platform: dict[str, Any]) -> None:
    urls = platform["urls"]
    assert _get(f"{urls['airflow']}/api/v2/monitor/health")[0] == 200
    assert _get(f"{urls['mlflow']}/health")[0] == 200
    assert _get(f"{urls['gateway']}/metrics")[0] == 200
    for port in (platform["ports"].airflow, platform["ports"].mlflow, platform["ports"].gateway):
        # Nothing listens on the machine's other addresses: a connection to a non-loopback address is refused.
        with socket.socket() as sock:
            sock.settimeout(2)
            host = socket.gethostbyname(socket.gethostname())
            if host.startswith("127."):
                continue
            assert sock.connect_ex((host, port)) != 0


def test_the_mlcd_page_is_in_the_airflow_ui_and_needs_a_login(platform: dict[str, Any]) -> None:
    api, urls = platform["api"], platform["urls"]
    plugins = api.get("/api/v2/plugins")["plugins"]
    mlcd = next(p for p in plugins if p["name"] == "mlcd")
    assert mlcd["external_views"][0]["href"] == "mlcd/"
    assert _get(f"{urls['airflow']}/mlcd/")[0] == 401
    status, page = _get(f"{urls['airflow']}/mlcd/", api.token())
    assert status == 200
    for heading in ("champion", "canary", "previous", "Traffic", "Quarantined batches", "Rollbacks", "Data Docs"):
        assert heading in page
    status, body = _get(f"{urls['airflow']}/mlcd/api/overview", api.token())
    overview = json.loads(body)
    assert status == 200 and overview["registry"]["ok"] and overview["routes"]["ok"]


def test_dags_are_parsed_without_errors(platform: dict[str, Any]) -> None:
    import time

    api = platform["api"]
    deadline = time.monotonic() + 120
    found: set[str] = set()
    while time.monotonic() < deadline:
        found = {d["dag_id"] for d in api.dags()}
        if {"mlcd_retrain", "mlcd_landing_watch", "mlcd_guard", "mlcd_control"} <= found:
            break
        time.sleep(2)
    assert {"mlcd_retrain", "mlcd_landing_watch", "mlcd_guard", "mlcd_control"} <= found
    assert api.get("/api/v2/importErrors")["total_entries"] == 0


def test_up_twice_does_not_start_a_second_copy(platform: dict[str, Any]) -> None:
    from mlcd.platform import status, up

    before = status(platform["settings"])
    assert all(before.values()), before
    up(platform["settings"], platform["ports"])
    assert status(platform["settings"]) == before
    logs = Path(platform["settings"].logs_dir)
    assert (logs / "airflow-scheduler.log").exists() and (logs / "mlflow.log").exists()
