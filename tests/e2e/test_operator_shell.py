"""The on-call engineer's shell after ``make up``: only ``MLCD_HOME`` is set, and the CLI still reaches the platform.

``mlcd up`` runs as ``make up`` runs it (a child process with a bare environment) on a state folder that carries
saved settings, as the demo leaves one. Then, in a second shell with nothing but ``MLCD_HOME``, ``mlcd rollback``
takes a real canary out of a real gateway: it finds the platform's address and the admin token under
``MLCD_HOME/run/``. The trigger form shows the state's saved params, and a version's MLflow link that named a port
that is gone is rewritten when the platform starts again.
"""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlcd.mlflow_server import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

MLCD = str(Path(sys.executable).parent / "mlcd")
DEMO_LIKE_DEFAULTS = {"epochs": 10, "batch_size": 32, "gate": {"accuracy_floor": 0.8, "non_inferiority_margin": 0.03}}


def shell(home: Path, **extra: str) -> dict[str, str]:
    """A bare shell: PATH, HOME, the locale and MLCD_HOME (PYTHONPATH only where this checkout needs it)."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "USER", "LOGNAME", "TMPDIR", "PYTHONPATH")
           if k in os.environ}
    env.update({"MLCD_HOME": str(home), **extra})
    return env


def mlcd(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MLCD, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from mlcd.homestate import save_settings

    home = tmp_path_factory.mktemp("oncall") / "state"
    save_settings(home, {"MLCD_RETRAIN_DEFAULTS": json.dumps(DEMO_LIKE_DEFAULTS), "MLCD_GUARD_BAKE_S": "30"})
    ports = {"MLCD_AIRFLOW_PORT": str(free_port()), "MLCD_MLFLOW_PORT": str(free_port()),
             "MLCD_GATEWAY_PORT": str(free_port())}
    up_env = shell(home, **ports)
    started = mlcd(up_env, "up", timeout=600)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield {"home": home, "ports": ports, "up": started.stdout, "up_env": up_env,
               "airflow": f"http://127.0.0.1:{ports['MLCD_AIRFLOW_PORT']}",
               "mlflow": f"http://127.0.0.1:{ports['MLCD_MLFLOW_PORT']}",
               "gateway": f"http://127.0.0.1:{ports['MLCD_GATEWAY_PORT']}"}
    finally:
        stopped = mlcd(shell(home), "down")
        assert stopped.returncode == 0, stopped.stderr


def test_up_says_where_the_page_is_and_which_saved_settings_it_applied(platform: dict[str, Any]) -> None:
    out = platform["up"]
    assert f"mlcd page  : {platform['airflow']}/mlcd/   (in the Airflow UI: Browse -> mlcd rollouts)" in out
    assert "settings saved with this state" in out and "MLCD_GUARD_BAKE_S, MLCD_RETRAIN_DEFAULTS" in out
    assert f"MLCD_HOME={platform['home']} mlcd status" in out


def test_the_trigger_form_shows_the_states_own_params(platform: dict[str, Any]) -> None:
    from mlcd.platform import AirflowApi, airflow_password
    from mlcd.settings import load_settings

    os.environ["MLCD_HOME"], previous = str(platform["home"]), os.environ["MLCD_HOME"]
    try:
        password = airflow_password(load_settings())
    finally:
        os.environ["MLCD_HOME"] = previous
    api = AirflowApi(platform["airflow"], "admin", password or "")
    deadline, params = time.monotonic() + 180, None
    while time.monotonic() < deadline and params is None:
        try:
            params = api.get("/api/v2/dags/mlcd_retrain/details")["params"]
        except OSError:  # not parsed yet (404)
            time.sleep(3)
    assert params is not None, "mlcd_retrain was not parsed within 180 s"
    assert params["epochs"]["value"] == 10 and params["batch_size"]["value"] == 32
    assert params["gate"]["value"] == DEMO_LIKE_DEFAULTS["gate"]


def test_rollback_from_a_shell_with_only_mlcd_home(platform: dict[str, Any], reference_data: Any) -> None:
    from mlcd.homestate import run_secret
    from mlcd.registry import ModelRegistry
    from mlcd.registry.state import RolloutState
    from mlcd.rollout.router import LocalGatewayRouter, RouteStatus
    from tests.modelkit import logged_models, register

    # Signed with the key `make up` created for this state: its gateway refuses an unsigned version.
    key = run_secret("model_signing_key", platform["home"])
    assert key, "make up keeps the model signing key under MLCD_HOME/run/"
    uris = logged_models(platform["mlflow"], reference_data.x_train[:2000], reference_data.y_train[:2000], key)
    stable, canary = (register(platform["mlflow"], "mnist-cnn", uris[k]) for k in ("healthy_a", "healthy_b"))
    registry = ModelRegistry(platform["mlflow"], "mnist-cnn")
    registry.bootstrap_champion(stable, "tests")
    registry.start_canary(canary, "tests", "canary under test")
    token = run_secret("gateway_admin_token", platform["home"])
    assert token, "make up keeps the gateway's admin token under MLCD_HOME/run/"
    router = LocalGatewayRouter(platform["gateway"], token)
    router.set_routes(stable, canary, 30)

    oncall = shell(platform["home"])  # nothing else: no MLCD_ADMIN_TOKEN, no URLs, no ports
    dry = mlcd(oncall, "rollback", "--version", canary, "--reason", "users report wrong digits", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith(f"dry run, nothing changed: would send 100% of traffic to version {stable}")
    assert router.get_routes() == RouteStatus(stable, canary, 30)

    done = mlcd(oncall, "rollback", "--version", canary, "--reason", "users report wrong digits")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (f"version {canary} rolled back; traffic on version {stable} "
                                   f"(asked by cli:{getpass.getuser()})")
    assert router.get_routes() == RouteStatus(stable, None, 0)
    record = registry.get_state(canary)
    assert record.state is RolloutState.ROLLED_BACK and record.transitions()[-1]["by"] == f"cli:{getpass.getuser()}"

    # The same shell reads the platform's own MLflow (a non-default port), not the default address.
    status = mlcd(oncall, "status")
    assert status.returncode == 0, status.stderr
    assert f"model mnist-cnn at {platform['mlflow']}" in status.stdout and "rolled_back" in status.stdout


def test_a_dead_page_link_is_rewritten_when_the_platform_starts(platform: dict[str, Any]) -> None:
    from mlflow import MlflowClient

    from mlcd.registry.tags import TAG_PAGE_URL
    from tests.modelkit import register

    client = MlflowClient(platform["mlflow"])
    versions = client.search_model_versions("name='mnist-cnn'")
    version = str(versions[0].version) if versions else register(platform["mlflow"], "mnist-cnn", "runs:/x/model")
    client.set_model_version_tag("mnist-cnn", version, TAG_PAGE_URL, f"http://127.0.0.1:9/mlcd/#v{version}")
    again = mlcd(platform["up_env"], "up")  # running services are kept; the links follow this address
    assert again.returncode == 0, again.stderr
    assert "versions relinked to this page" in again.stdout
    tags = client.get_model_version("mnist-cnn", version).tags
    assert tags[TAG_PAGE_URL] == f"{platform['airflow']}/mlcd/#v{version}"
