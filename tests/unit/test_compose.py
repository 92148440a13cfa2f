"""docker-compose.yaml as Compose reads it: services, loopback ports, health checks, start order, secrets.

No Docker engine runs here; ``docker-compose config`` (Debian's docker-compose 1.29, which CI installs)
resolves the file, interpolates ``${...}`` from an env file and validates it against the Compose schema
without one. The env file is `.env.example` with every empty secret filled by a fresh random value, so each
assertion about a secret can check that the value came from the env file and nowhere else.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"

AIRFLOW_SERVICES = {"airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"}
ONE_SHOT = {"airflow-init", "storage-init"}
LONG_RUNNING = AIRFLOW_SERVICES | {"postgres", "mlflow", "gateway", "minio", "prometheus"}
# service -> container port published on the host (same number by default)
PUBLISHED = {"airflow-api-server": 8080, "mlflow": 5000, "gateway": 8000}
HEALTHY, COMPLETED = "service_healthy", "service_completed_successfully"
AIRFLOW_READY = {"postgres": HEALTHY, "airflow-init": COMPLETED, "storage-init": COMPLETED}
DEPENDS_ON = {
    "postgres": {},
    "airflow-init": {"postgres": HEALTHY},
    "airflow-api-server": AIRFLOW_READY,
    "airflow-dag-processor": AIRFLOW_READY,
    "airflow-scheduler": {**AIRFLOW_READY, "airflow-api-server": HEALTHY, "mlflow": HEALTHY},
    "airflow-triggerer": {**AIRFLOW_READY, "airflow-api-server": HEALTHY},
    "mlflow": {"postgres": HEALTHY, "airflow-init": COMPLETED},
    "gateway": {"postgres": HEALTHY, "mlflow": HEALTHY, "storage-init": COMPLETED},  # postgres: the label ledger
    "minio": {},
    "storage-init": {"minio": HEALTHY},
    "prometheus": {},
}
# State that must outlive `docker-compose down`: service -> container path backed by a named volume.
STATE = {
    "postgres": "/var/lib/postgresql/data",
    "mlflow": "/var/lib/mlflow",
    "airflow-scheduler": "/var/lib/mlcd",
    "airflow-api-server": "/opt/airflow/logs",
    "gateway": "/var/lib/mlcd",
    "minio": "/data",
    "prometheus": "/prometheus",
}
EXECUTION_API = "http://airflow-api-server:8080/execution/"
REQUIRED_SECRETS = (
    "POSTGRES_PASSWORD", "AIRFLOW_DB_PASSWORD", "MLFLOW_DB_PASSWORD", "AIRFLOW_FERNET_KEY",
    "AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY", "AIRFLOW_ADMIN_PASSWORD", "MLCD_ADMIN_TOKEN",
    "MLCD_DB_PASSWORD", "MINIO_ROOT_PASSWORD", "MLCD_FEEDBACK_TOKEN", "MLCD_GATEWAY_SECRET",
)
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|FERNET|_KEY$|SQL_ALCHEMY_CONN|BACKEND_STORE_URI")
URL_CREDENTIALS = re.compile(r"://[^/\s:@]+:([^@\s]+)@")
INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[?-][^}]*)?\}")


def _example_lines() -> list[tuple[str, str]]:
    pairs = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            pairs.append((name.strip(), value.strip()))
    return pairs


def _clean_env() -> dict[str, str]:
    # Variables in the caller's environment win over the env file in Compose's interpolation: leave them out.
    return {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}


def _compose(env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    assert binary is not None
    return subprocess.run(
        [binary, "--env-file", str(env_file), "-f", str(COMPOSE), *args],
        cwd=REPO, env=_clean_env(), capture_output=True, text=True, timeout=120,
    )


@pytest.fixture(scope="module")
def secrets_filled() -> dict[str, str]:
    """The env file's values: `.env.example` with every empty (secret) value replaced by a random one."""
    return {name: value or f"s{secrets.token_hex(16)}" for name, value in _example_lines()}


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, secrets_filled: dict[str, str]) -> dict[str, Any]:
    if shutil.which("docker-compose") is None:
        reason = ("docker-compose binary not found on PATH: the compose file was NOT checked "
                  "(apt-get install -y docker-compose; CI installs it)")
        print(reason, file=sys.stderr)
        pytest.skip(reason)
    env_file = tmp_path_factory.mktemp("compose") / "test.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in secrets_filled.items()))
    result = _compose(env_file, "config")
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    parsed = yaml.safe_load(result.stdout)
    assert isinstance(parsed, dict)
    return parsed


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _ports(service: dict[str, Any]) -> list[tuple[str | None, str, int]]:
    """(host_ip, host port, container port) of each published port, in either Compose syntax."""
    out = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            out.append((port.get("host_ip"), str(port.get("published")), int(port["target"])))
            continue
        spec = str(port).split("/", 1)[0]
        parts = spec.rsplit(":", 2)
        if len(parts) == 3:
            out.append((parts[0], parts[1], int(parts[2])))
        elif len(parts) == 2:
            out.append((None, parts[0], int(parts[1])))
        else:
            out.append((None, "", int(parts[0])))
    return out


def test_the_platform_services(config: dict[str, Any]) -> None:
    assert set(config["services"]) == LONG_RUNNING | ONE_SHOT


def test_ports_are_published_on_loopback_only(config: dict[str, Any]) -> None:
    published = {}
    for name, service in config["services"].items():
        for host_ip, host_port, target in _ports(service):
            where = host_ip or "every interface"
            assert host_ip == "127.0.0.1", f"{name} publishes {host_port}:{target} on {where}"
            published[name] = (int(host_port), target)
        assert "network_mode" not in service or service["network_mode"] != "host", name
    assert published == {name: (port, port) for name, port in PUBLISHED.items()}


def test_every_long_running_service_has_a_healthcheck(config: dict[str, Any]) -> None:
    for name in LONG_RUNNING:
        service = config["services"][name]
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1, name
        assert {"interval", "timeout", "retries"} <= set(check), name
        assert service.get("restart") == "unless-stopped", name
    for one_shot in ONE_SHOT:
        init = config["services"][one_shot]
        assert init.get("restart") == "no" and not init.get("ports"), one_shot


def test_start_order_waits_for_health_and_for_the_init_service(config: dict[str, Any]) -> None:
    for name, expected in DEPENDS_ON.items():
        depends = config["services"][name].get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions, not a bare list"
        assert {dep: spec.get("condition") for dep, spec in depends.items()} == expected, name


def test_airflow_services_share_image_executor_and_secrets(
    config: dict[str, Any], secrets_filled: dict[str, str]
) -> None:
    services = config["services"]
    images = {services[n]["image"] for n in AIRFLOW_SERVICES | ONE_SHOT | {"mlflow"}}
    assert images == {secrets_filled["MLCD_AIRFLOW_IMAGE"]}
    for name in AIRFLOW_SERVICES | ONE_SHOT | {"mlflow"}:
        assert services[name]["build"]["dockerfile"] == "deploy/docker/Dockerfile.airflow", name
    assert services["gateway"]["build"]["dockerfile"] == "deploy/docker/Dockerfile.gateway"
    for name in AIRFLOW_SERVICES | {"airflow-init"}:
        env = _env(services[name])
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor", name
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == EXECUTION_API, name
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == secrets_filled["AIRFLOW_JWT_SECRET"], name
        assert env["AIRFLOW__API__SECRET_KEY"] == secrets_filled["AIRFLOW_API_SECRET_KEY"], name
        assert env["AIRFLOW__CORE__FERNET_KEY"] == secrets_filled["AIRFLOW_FERNET_KEY"], name
        password = secrets_filled["AIRFLOW_DB_PASSWORD"]
        expected_conn = f"postgresql+psycopg2://airflow:{password}@postgres:5432/airflow"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == expected_conn, name
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000", name
        assert env["MLCD_ADMIN_TOKEN"] == secrets_filled["MLCD_ADMIN_TOKEN"], name
    init_env = _env(services["airflow-init"])
    assert init_env["AIRFLOW_ADMIN_PASSWORD"] == secrets_filled["AIRFLOW_ADMIN_PASSWORD"]
    commands = {n: services[n]["command"][0] for n in AIRFLOW_SERVICES}
    assert commands == {"airflow-api-server": "api-server", "airflow-scheduler": "scheduler",
                        "airflow-dag-processor": "dag-processor", "airflow-triggerer": "triggerer"}


def test_mlflow_and_gateway_wiring(config: dict[str, Any], secrets_filled: dict[str, str]) -> None:
    services = config["services"]
    mlflow = services["mlflow"]
    assert _env(mlflow)["MLFLOW_BACKEND_STORE_URI"] == (
        f"postgresql://mlflow:{secrets_filled['MLFLOW_DB_PASSWORD']}@postgres:5432/mlflow")
    args = [str(a) for a in mlflow["entrypoint"] + mlflow["command"]]
    assert args[:2] == ["mlflow", "server"]
    assert args[args.index("--artifacts-destination") + 1].startswith("/var/lib/mlflow")
    assert not any("postgresql://" in a for a in args), "the backend URI holds a password: env, not argv"
    assert "mlflow" in _env(mlflow)["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    gateway = _env(services["gateway"])
    assert gateway["MLCD_ADMIN_TOKEN"] == secrets_filled["MLCD_ADMIN_TOKEN"]
    # Live feedback works as shipped: the labeller's token, one signing key, labels claimed in the shared ledger.
    assert gateway["MLCD_FEEDBACK_TOKEN"] == secrets_filled["MLCD_FEEDBACK_TOKEN"]
    assert gateway["MLCD_GATEWAY_SECRET"] == secrets_filled["MLCD_GATEWAY_SECRET"]
    assert gateway["MLCD_LEDGER_URL"].startswith("postgresql+psycopg2://mlcd:")
    assert gateway["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    pg = _env(services["postgres"])
    assert pg["POSTGRES_PASSWORD"] == secrets_filled["POSTGRES_PASSWORD"]
    assert pg["AIRFLOW_DB_PASSWORD"] == secrets_filled["AIRFLOW_DB_PASSWORD"]
    assert pg["MLFLOW_DB_PASSWORD"] == secrets_filled["MLFLOW_DB_PASSWORD"]


def test_state_lives_in_named_volumes(config: dict[str, Any]) -> None:
    named = set(config.get("volumes") or {})
    for name, path in STATE.items():
        sources = {}
        for volume in config["services"][name].get("volumes") or []:
            if isinstance(volume, dict):
                sources[volume["target"]] = volume.get("source")
            else:
                source, target = str(volume).split(":")[:2]
                sources[target] = source
        assert sources.get(path) in named, f"{name}:{path} is not a named volume ({sources.get(path)})"


def test_init_scripts_are_mounted_and_parse(config: dict[str, Any]) -> None:
    mounts = {s: " ".join(map(str, config["services"][s].get("volumes") or []))
              for s in ("postgres", "airflow-init")}
    assert "deploy/compose/postgres-init.sh:/docker-entrypoint-initdb.d/" in mounts["postgres"]
    assert "deploy/compose/airflow-init.sh:/opt/mlcd/airflow-init.sh" in mounts["airflow-init"]
    for script in ("postgres-init.sh", "airflow-init.sh"):
        path = REPO / "deploy" / "compose" / script
        assert os.access(path, os.X_OK), f"{path} must be executable"
        subprocess.run(["bash", "-n", str(path)], check=True)
    sql = (REPO / "deploy" / "compose" / "postgres-init.sh").read_text()
    assert "CREATE DATABASE airflow OWNER airflow" in sql and "CREATE DATABASE mlflow OWNER mlflow" in sql
    assert "CREATE DATABASE mlcd OWNER mlcd" in sql and "GRANT CONNECT ON DATABASE mlcd TO mlcd" in sql


def test_the_same_configuration_as_a_cluster(config: dict[str, Any], secrets_filled: dict[str, str]) -> None:
    """Ledger in Postgres, storage in an S3 object store, metrics from Prometheus (issue 11.6), as deploy/k8s."""
    from mlcd.rollout.providers import PROVIDERS

    services = config["services"]
    bucket = secrets_filled["MLCD_BUCKET"]
    storage = {"MLCD_STORAGE_URL": f"s3://{bucket}/data",
               "MLCD_STORAGE_OPTIONS": '{"endpoint_url": "http://minio:9000"}',
               "AWS_ACCESS_KEY_ID": secrets_filled["MINIO_ROOT_USER"],
               "AWS_SECRET_ACCESS_KEY": secrets_filled["MINIO_ROOT_PASSWORD"]}
    for name in AIRFLOW_SERVICES | ONE_SHOT | {"gateway"}:
        env = _env(services[name])
        assert {k: env.get(k) for k in storage} == storage, name
    for name in AIRFLOW_SERVICES:
        env = _env(services[name])
        assert env["MLCD_LEDGER_URL"] == (
            f"postgresql+psycopg2://mlcd:{secrets_filled['MLCD_DB_PASSWORD']}@postgres:5432/mlcd"), name
        assert env["MLCD_METRICS_PROVIDER"] == secrets_filled["MLCD_METRICS_PROVIDER"] == "prometheus", name
        assert env["MLCD_METRICS_PROVIDER"] in PROVIDERS
        assert env["MLCD_PROMETHEUS_URL"] == "http://prometheus:9090", name
    minio = _env(services["minio"])
    assert (minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"]) == (
        storage["AWS_ACCESS_KEY_ID"], storage["AWS_SECRET_ACCESS_KEY"])
    assert _env(services["postgres"])["MLCD_DB_PASSWORD"] == secrets_filled["MLCD_DB_PASSWORD"]
    # Prometheus scrapes the gateway service on the port it listens on, keeping the gateway's own labels.
    mounts = " ".join(map(str, services["prometheus"].get("volumes") or []))
    assert "deploy/compose/prometheus.yml:/etc/prometheus/prometheus.yml" in mounts
    scrape = yaml.safe_load((REPO / "deploy" / "compose" / "prometheus.yml").read_text())
    [job] = scrape["scrape_configs"]
    assert job["honor_labels"] is True and job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"gateway:{PUBLISHED['gateway']}"]
    assert not services["prometheus"].get("ports") and not services["minio"].get("ports")  # internal only


def _environment_blocks(raw: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    blocks = [(f"services.{n}", s.get("environment") or {}) for n, s in raw["services"].items()]
    blocks += [(k, v.get("environment") or {})
               for k, v in raw.items() if k.startswith("x-") and isinstance(v, dict)]
    return blocks


def test_no_literal_secret_in_the_compose_file() -> None:
    raw = yaml.safe_load(COMPOSE.read_text())
    checked = 0
    for where, env in _environment_blocks(raw):
        assert isinstance(env, dict), f"{where}: use the mapping form of environment"
        for key, value in env.items():
            value = str(value)
            if SECRET_NAME.search(key):
                checked += 1
                if key.endswith("PASSWORDS_FILE"):
                    continue  # a path, not a secret
                assert "${" in value, f"{where}.{key} holds a literal secret; use ${{VAR:?…}} from .env"
            for password in URL_CREDENTIALS.findall(value):
                assert password.startswith("${"), f"{where}.{key} has a literal password in a URL"
    assert checked >= 10
    # Secrets the stack cannot run without are required (`:?`), not silently defaulted.
    for name in REQUIRED_SECRETS:
        uses = [m for m in INTERPOLATION.finditer(COMPOSE.read_text()) if m.group(1) == name]
        assert uses and all((m.group(2) or "").startswith(":?") for m in uses), name


def test_env_example_lists_every_variable_and_no_secret_value() -> None:
    example = dict(_example_lines())
    referenced = {m.group(1) for m in INTERPOLATION.finditer(COMPOSE.read_text())}
    assert referenced <= set(example), f"missing from .env.example: {sorted(referenced - set(example))}"
    for name, value in example.items():
        if SECRET_NAME.search(name):
            assert value == "", f".env.example gives {name} a value; leave secrets empty"


def test_unfilled_example_is_refused_with_the_variable_named(config: dict[str, Any]) -> None:
    result = _compose(ENV_EXAMPLE, "config")
    assert result.returncode != 0
    assert re.search(r"set [A-Z_]+ in \.env", result.stderr), result.stderr


def test_dotenv_is_git_ignored() -> None:
    if shutil.which("git") and (REPO / ".git").exists():
        ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO)
        assert ignored.returncode == 0, ".env must be git-ignored"
        example = subprocess.run(["git", "check-ignore", "-q", ".env.example"], cwd=REPO)
        assert example.returncode == 1, ".env.example must not be ignored"
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", ".env"], cwd=REPO,
                                 capture_output=True)
        assert tracked.returncode != 0, ".env is tracked by git"
    else:
        patterns = [p.strip() for p in (REPO / ".gitignore").read_text().splitlines()]
        assert ".env" in patterns or "/.env" in patterns
