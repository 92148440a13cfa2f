"""Every route of the mlcd plugin needs an Airflow login, the Data Docs included, on a real Airflow api-server.

Starts only the api-server (with the plugin) the way `make up` does, on a free loopback port with its own
MLCD_HOME; the routes are read from the plugin's own app, so a route added later is checked too.
"""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from mlcd.mlflow_server import free_port

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from mlcd.platform import AirflowApi, Ports, _bin, airflow_password, down, platform_env, services, start, wait_healthy
    from mlcd.settings import get_settings

    home = tmp_path_factory.mktemp("ui-auth-home")
    patched = pytest.MonkeyPatch()  # module scope: the function-scoped monkeypatch fixture is not available
    for key, value in {"MLCD_HOME": str(home), "AIRFLOW_HOME": str(home / "airflow")}.items():
        patched.setenv(key, value)
    settings = get_settings()
    ports = Ports(airflow=free_port(), mlflow=free_port(), gateway=free_port())
    settings.data_docs_dir.mkdir(parents=True, exist_ok=True)
    (settings.data_docs_dir / "index.html").write_text("<html><body>validation results: secret-ish</body></html>")
    try:
        env = platform_env(settings, ports)
        subprocess.run([_bin("airflow"), "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL,
                       cwd=settings.project_root)
        service = next(s for s in services(settings, ports) if s.name == "airflow-api-server")
        start(service, settings, env)
        assert wait_healthy(service, timeout=180), (settings.logs_dir / "airflow-api-server.log").read_text()[-3000:]
        url = f"http://127.0.0.1:{ports.airflow}"
        yield {"url": url, "api": AirflowApi(url, "admin", airflow_password(settings) or ""),
               "jwt_secret": (settings.home / "run" / "jwt_secret").read_text().strip()}
    finally:
        down(settings)
        patched.undo()


def _request(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def _plugin_routes() -> dict[str, set[str]]:
    """One concrete URL path per route (or mount) of the plugin's app, with the methods it answers."""
    from mlcd.airflow.ui import URL_PREFIX, create_app

    routes: dict[str, set[str]] = {}
    for route in create_app().routes:
        path = str(getattr(route, "path", ""))
        if "{path:path}" in path:
            path = path.replace("{path:path}", "index.html")
        elif type(route).__name__ == "Mount":
            path = path.rstrip("/") + "/index.html"  # a mounted sub-app: ask for a file inside it
        routes[URL_PREFIX + path] = set(getattr(route, "methods", None) or {"GET", "HEAD"})
    return routes


def test_every_plugin_route_refuses_a_request_without_a_session(api_server: dict[str, Any]) -> None:
    routes = _plugin_routes()
    assert {"/mlcd/", "/mlcd/api/overview", "/mlcd/data-docs/index.html"} <= set(routes), routes
    routes.update({"/mlcd/data-docs/": {"GET", "HEAD"}, "/mlcd/data-docs/no-such-file.html": {"GET"}})
    open_routes = []
    for path, methods in routes.items():
        for method in sorted(methods):
            status, _ = _request(api_server["url"] + path, method)
            if status not in (401, 403):
                open_routes.append(f"{method} {path} answered {status} without a login")
        # A forged or expired token is no session either.
        status, _ = _request(api_server["url"] + path, headers={"Authorization": "Bearer not-a-real-token"})
        if status not in (401, 403):
            open_routes.append(f"GET {path} answered {status} to a forged token")
    assert not open_routes, open_routes


def test_a_logged_in_user_reads_the_data_docs_and_nothing_outside_them(api_server: dict[str, Any]) -> None:
    auth = {"Authorization": f"Bearer {api_server['api'].token()}"}
    status, body = _request(api_server["url"] + "/mlcd/data-docs/index.html", headers=auth)
    assert status == 200 and "validation results" in body
    status, body = _request(api_server["url"] + "/mlcd/data-docs/", headers=auth)
    assert status == 200 and "validation results" in body
    assert _request(api_server["url"] + "/mlcd/data-docs/no-such-file.html", headers=auth)[0] == 404
    # ../ (encoded, so the client does not collapse it) must not reach the secrets next to the Data Docs.
    for escape in ("..%2frun%2fjwt_secret", "..%2f..%2frun%2fjwt_secret", "%2e%2e/run/jwt_secret"):
        status, body = _request(api_server["url"] + "/mlcd/data-docs/" + escape, headers=auth)
        assert status == 404 and api_server["jwt_secret"] not in body, (escape, status, body[:200])
