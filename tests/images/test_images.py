"""The images as users get them (#29): each builds from this checkout, carries only its role's packages, runs as a
non-root user on a read-only root filesystem, declares its labels and health check, and the gateway image serves
a registered model from a real MLflow server, healthy by its own HEALTHCHECK.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.rehearsal.containers import (
    CPU_BOUND_ENV,
    IMAGES,
    Container,
    launch_gateway_pod,
    podman,
    unique_name,
)
from tests.rehearsal.services import free_port

# What each role must not carry (the issue: "the gateway image installs Airflow, moto, pytest, mypy to serve").
TEST_TOOLS = {"pytest", "mypy", "ruff", "moto", "pip-audit"}
FORBIDDEN = {
    "gateway": TEST_TOOLS | {"apache-airflow", "apache-airflow-core", "great-expectations", "mlflow", "celery"},
    # (FastAPI and uvicorn come with mlflow-skinny, so they are not forbidden here.)
    "trainer": TEST_TOOLS | {"apache-airflow", "apache-airflow-core", "great-expectations", "mlflow", "celery"},
    "airflow": TEST_TOOLS,
}
REQUIRED = {
    "gateway": {"mlcd", "fastapi", "uvicorn", "mlflow-skinny", "keras", "tensorflow-cpu", "s3fs", "psycopg2-binary"},
    "trainer": {"mlcd", "mlflow-skinny", "keras", "tensorflow-cpu", "s3fs"},
    "airflow": {"mlcd", "apache-airflow", "apache-airflow-providers-cncf-kubernetes", "great-expectations", "mlflow"},
}
# Each role's smoke command on a read-only root, as its Kubernetes object runs it (HOME and /tmp are emptyDirs).
SMOKE = {
    "gateway": ["python", "-c", "import keras, mlcd.serving.app, mlcd.serving.v2; print('ok')"],
    "trainer": ["python", "-c", "import tensorflow, keras, mlcd.training.trainer; print('ok')"],
    "airflow": ["python", "-c", "import mlcd.airflow.dags, mlcd.airflow.training; print('ok')"],
}
WRITABLE = {"gateway": ["/var/lib/mlcd", "/tmp", "/home/mlcd"], "trainer": ["/home/mlcd", "/tmp"],
            "airflow": ["/home/airflow", "/opt/airflow/logs", "/tmp"]}
OCI_LABELS = ("title", "description", "source", "licenses", "version", "revision")


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def inspect(image: str) -> dict[str, Any]:
    return dict(json.loads(podman("image", "inspect", image).stdout)[0])


def run_in(role: str, command: list[str], writable: list[str] | None = None, user: str | None = None,
           timeout: float = 180) -> str:
    """Run ``command`` in the role's image on a read-only root; returns its output (fails on a non-zero exit)."""
    tmp = Path(f"/tmp/mlcd-images-{unique_name(role)}.log")
    # The command replaces the ENTRYPOINT too (the airflow image's is `airflow`).
    container = Container(unique_name(f"images-{role}"), IMAGES[role], command[1:], CPU_BOUND_ENV,
                          writable if writable is not None else WRITABLE[role], user or image_user(role), tmp,
                          entrypoint=command[0])
    try:
        code = container.start().wait(timeout)
        out = container.logs()
    finally:
        container.stop()
        tmp.unlink(missing_ok=True)
    assert code == 0, f"{role}: {' '.join(command)} exited {code}:\n{out[-3000:]}"
    return out


def image_user(role: str) -> str:
    return {"gateway": "10001:10001", "trainer": "1000:1000", "airflow": "50000:0"}[role]


@pytest.mark.parametrize("role", ["gateway", "trainer", "airflow"])
def test_image_metadata(role: str, built_images: dict[str, float]) -> None:
    info = inspect(IMAGES[role])
    config = info["Config"]
    user = str(config.get("User") or "")
    assert user and user.split(":")[0] not in ("0", "root"), f"{role} runs as {user!r}"
    labels = config.get("Labels") or {}
    missing = [k for k in OCI_LABELS if not labels.get(f"org.opencontainers.image.{k}")]
    assert not missing, f"{role}: labels missing {missing}"
    assert labels["org.opencontainers.image.title"] == f"mlcd-{role}"
    health = info.get("Healthcheck") or config.get("Healthcheck")  # podman keeps it beside Config
    if role in ("gateway", "airflow"):  # the roles that serve
        assert health and health.get("Test") and health["Test"][0] != "NONE", f"{role}: no HEALTHCHECK"
    assert set(config.get("Volumes") or {}) == set(WRITABLE[role]), "the declared writable paths"


@pytest.mark.parametrize("role", ["gateway", "trainer", "airflow"])
def test_image_carries_only_its_role(role: str, built_images: dict[str, float]) -> None:
    out = run_in(role, ["pip", "list", "--format", "json", "--disable-pip-version-check"], writable=[])
    installed = {canonical(p["name"]) for p in json.loads(out.strip().splitlines()[-1])}
    assert not (FORBIDDEN[role] & installed), f"{role} carries {sorted(FORBIDDEN[role] & installed)}"
    assert REQUIRED[role] <= installed, f"{role} lacks {sorted(REQUIRED[role] - installed)}"


@pytest.mark.parametrize("role", ["gateway", "trainer", "airflow"])
def test_image_runs_non_root_on_a_read_only_root(role: str, built_images: dict[str, float]) -> None:
    assert run_in(role, SMOKE[role]).strip().splitlines()[-1] == "ok"
    # The root filesystem refuses writes (the code, the venv), the declared paths take them.
    probe = ("import os, sys\n"
             "assert os.getuid() != 0\n"
             "for path in ('/opt/venv/x', '/etc/x'):\n"
             "    try:\n"
             "        open(path, 'w')\n"
             "    except OSError:\n"
             "        pass\n"
             "    else:\n"
             "        sys.exit(f'{path} is writable')\n"
             "for folder in sys.argv[1:]:\n"
             "    open(os.path.join(folder, 'probe'), 'w').write('x')\n"
             "print('ok')\n")
    assert run_in(role, ["python", "-c", probe, *WRITABLE[role]]).strip().splitlines()[-1] == "ok"


def test_airflow_image_parses_the_dag_bundle(built_images: dict[str, float]) -> None:
    """The chart's components run ``airflow ...``: the image's DAG bundle parses without import errors."""
    script = ("import os\n"
              "os.environ['AIRFLOW__CORE__LOAD_EXAMPLES'] = 'False'\n"
              "from airflow.dag_processing.dagbag import DagBag\n"
              "bag = DagBag('/opt/airflow/dags')\n"
              "assert not bag.import_errors, bag.import_errors\n"
              "print(sorted(bag.dag_ids))\n")
    out = run_in("airflow", ["python", "-c", script], timeout=300)
    assert "mlcd_retrain" in out.strip().splitlines()[-1]


def test_gateway_image_serves_a_registered_model(built_images: dict[str, float], tracking_uri: str,
                                                 reference_data: Any, tmp_path: Path) -> None:
    """Cold start to healthy by the image's own HEALTHCHECK, then a prediction, from a real MLflow registry."""
    from tests.modelkit import logged_models, register

    uris = logged_models(tracking_uri, reference_data.x_train, reference_data.y_train)
    version = register(tracking_uri, "images-gateway", uris["healthy_a"])
    port = free_port()
    env = {"MLFLOW_TRACKING_URI": tracking_uri, "MLCD_MODEL_NAME": "images-gateway", "MLCD_SERVE_VARIANT": "stable"}
    start = time.monotonic()
    pod = launch_gateway_pod(version, env, port, tmp_path / "pod")
    try:
        deadline = start + 240
        healthy_s = None
        while time.monotonic() < deadline and pod.alive():
            # The image's HEALTHCHECK, run by the engine: exit 0 only once /healthz answers 200.
            if podman("healthcheck", "run", pod.container.name, check=False).returncode == 0:
                healthy_s = time.monotonic() - start
                break
            time.sleep(0.5)
        assert healthy_s is not None, pod.container.logs()[-3000:]
        print(f"gateway image: cold start to healthy {healthy_s:.1f}s")
        assert pod.ready()
        body = json.dumps({"images": [np.asarray(reference_data.x_test[0]).tolist()]}).encode()
        req = urllib.request.Request(f"{pod.url}/predict", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            answer = json.loads(resp.read())
        assert answer["model"] == "images-gateway" and answer["predictions"][0]["class"] in range(10), answer
        with urllib.request.urlopen(f"{pod.url}/metrics", timeout=10) as resp:
            assert b"mlcd_" in resp.read()
    finally:
        pod.stop()


def test_airflow_image_api_server_becomes_healthy(built_images: dict[str, float], tmp_path: Path) -> None:
    """The api-server of the airflow image, on its own SQLite in /tmp, healthy by the image's HEALTHCHECK."""
    port = free_port()
    # [api] host/port from the environment: the HEALTHCHECK reads the same AIRFLOW__API__PORT.
    env = {**CPU_BOUND_ENV, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "sqlite:////tmp/airflow.db",
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(port),
           "AIRFLOW__API__WORKERS": "1", "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(16),
           "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(16),  # from a Secret, as the chart and compose give them
           "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/"}
    container = Container(unique_name("images-airflow-api"), IMAGES["airflow"],
                          ["-c", "airflow db migrate >/dev/null && exec airflow api-server"], env,
                          WRITABLE["airflow"], image_user("airflow"), tmp_path / "airflow.log", entrypoint="bash")
    start = time.monotonic()
    container.start()
    try:
        healthy_s = None
        while time.monotonic() < start + 300 and container.alive():
            if podman("healthcheck", "run", container.name, check=False, timeout=60).returncode == 0:
                healthy_s = time.monotonic() - start
                break
            time.sleep(1)
        assert healthy_s is not None, container.logs()[-3000:]
        print(f"airflow image: cold start (db migrate + api-server) to healthy {healthy_s:.1f}s")
    finally:
        container.stop()
