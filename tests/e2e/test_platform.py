"""`make up` / `make down` for real: Airflow's parts, MLflow and the gateway on loopback, and the mlcd page.

Starts the whole platform once (about a minute) on free ports with its own MLCD_HOME and stops it afterwards.
"""

from __future__ import annotations

import ipaddress
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
    patched = pytest.MonkeyPatch()  # module scope: the function-scoped monkeypatch fixture is not available
    for key, value in {"MLCD_HOME": str(home), "AIRFLOW_HOME": str(home / "airflow"),
                       "MLCD_ADMIN_TOKEN": "platform-test-token-0123456789"}.items():
        patched.setenv(key, value)
    settings = get_settings()
    ports = Ports(airflow=free_port(), mlflow=free_port(), gateway=free_port())
    try:
        urls = up(settings, ports)
        api = AirflowApi(urls["airflow"], "admin", airflow_password(settings) or "")
        yield {"settings": settings, "ports": ports, "urls": urls, "api": api}
    finally:
        down(settings)
        patched.undo()


def _get(url: str, token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def _listening_sockets(sessions: set[int]) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket held by a process of the given sessions.

    Every service is started in its own session, so its workers (uvicorn, gunicorn, LocalExecutor, the triggerer's
    children) are found by session id even when they were re-parented.
    """
    import psutil

    found: list[tuple[str, str, int]] = []
    for proc in psutil.process_iter(["pid", "name"]):
        try:
            if os.getsid(proc.pid) not in sessions:
                continue
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.append((proc.info["name"], conn.laddr.ip, conn.laddr.port))
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            continue
    return found


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def test_every_service_answers_on_loopback_only(platform: dict[str, Any]) -> None:
    import psutil

    from mlcd.platform import status

    urls, ports = platform["urls"], platform["ports"]
    assert _get(f"{urls['airflow']}/api/v2/monitor/health")[0] == 200
    assert _get(f"{urls['mlflow']}/health")[0] == 200
    assert _get(f"{urls['gateway']}/metrics")[0] == 200
    pids = status(platform["settings"])
    assert all(pids.values()), pids
    sockets = _listening_sockets({pid for pid in pids.values() if pid})
    # The three public ports are among the sockets seen, so the check below inspects the real listeners.
    assert {ports.airflow, ports.mlflow, ports.gateway} <= {port for _, _, port in sockets}, sockets
    exposed = [s for s in sockets if not _is_loopback(s[1])]  # 0.0.0.0, ::, or a real interface's address
    assert not exposed, f"listening beyond loopback: {exposed}"
    # And from the outside: a connection to each of the machine's non-loopback addresses is refused.
    others = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
              if a.family == socket.AF_INET and not _is_loopback(a.address)]
    for host in others:
        for port in (ports.airflow, ports.mlflow, ports.gateway):
            with socket.socket() as sock:
                sock.settimeout(2)
                assert sock.connect_ex((host, port)) != 0, f"{host}:{port} accepted a connection"


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
