"""``make up`` / ``make down``: the long-running embedded platform on 127.0.0.1.

Airflow 3 is started part by part (api-server with the UI, scheduler, dag-processor, triggerer) instead of
``airflow standalone``, which binds every interface and starts 32 workers. MLflow and the gateway run beside it.
Each service is a detached process with a pid file under ``MLCD_HOME/run`` and a log under ``MLCD_HOME/logs``;
``up`` skips services that are already running, so running it twice never starts a second copy.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlcd.embedded import airflow_env, ensure_pools
from mlcd.settings import Settings, get_settings

ADMIN_USER = "admin"


@dataclass(frozen=True)
class Ports:
    airflow: int = int(os.environ.get("MLCD_AIRFLOW_PORT", "8080"))
    mlflow: int = int(os.environ.get("MLCD_MLFLOW_PORT", "5000"))
    gateway: int = int(os.environ.get("MLCD_GATEWAY_PORT", "8000"))


@dataclass(frozen=True)
class Service:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    health_url: str | None = None


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _private_dir(path: Path) -> Path:
    """A folder only the owner can enter (it holds secrets and pid files)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def write_private(path: Path, text: str) -> bool:
    """Create ``path`` with mode 600 from its first byte (``O_CREAT|O_EXCL``): never readable by others.

    Returns ``False`` when the file already existed (it is left as is, but tightened to 600 if it was looser,
    as an older mlcd wrote some secrets 644).
    """
    _private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        fd = os.open(path, os.O_RDONLY)
        try:
            if os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return True


def _secret(path: Path) -> str:
    """A per-installation secret kept in MLCD_HOME (never in code): created once (mode 600), then reused."""
    write_private(path, secrets.token_urlsafe(32))
    return path.read_text().strip()


def _airflow_passwords_file(run: Path) -> Path:
    """The SimpleAuthManager password file, written by us with mode 600 before Airflow starts.

    Left to Airflow, it is created with the process umask (644 here) and the generated password is printed
    to the api-server's log; written first, Airflow only reads it.
    """
    path = run / "airflow_passwords.json"
    write_private(path, json.dumps({ADMIN_USER: secrets.token_urlsafe(16)}) + "\n")
    return path


def platform_env(settings: Settings, ports: Ports) -> dict[str, str]:
    """Embedded Airflow config, loopback URLs and every secret; :func:`start` gives each service only the
    secrets of its role (:func:`mlcd.envroles.env_for`)."""
    env = dict(os.environ)
    env.update(airflow_env(settings))
    run = _private_dir(settings.home / "run")
    env.update(
        {
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{ports.airflow}/execution/",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{ports.airflow}",
            "AIRFLOW__API_AUTH__JWT_SECRET": _secret(run / "jwt_secret"),
            "AIRFLOW__API__SECRET_KEY": _secret(run / "api_secret"),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(_airflow_passwords_file(run)),
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports.mlflow}",
            "MLCD_GATEWAY_URL": f"http://127.0.0.1:{ports.gateway}",
            "MLCD_ADMIN_TOKEN": os.environ.get("MLCD_ADMIN_TOKEN") or _secret(run / "gateway_admin_token"),
            "MLCD_FEEDBACK_TOKEN": os.environ.get("MLCD_FEEDBACK_TOKEN") or _secret(run / "gateway_feedback_token"),
            "MLCD_GATEWAY_SECRET": os.environ.get("MLCD_GATEWAY_SECRET") or _secret(run / "gateway_secret"),
            # Signed models by default: the trainer signs with it, the gateway refuses what it did not sign.
            "MLCD_MODEL_SIGNING_KEY": os.environ.get("MLCD_MODEL_SIGNING_KEY") or _secret(run / "model_signing_key"),
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def services(settings: Settings, ports: Ports) -> list[Service]:
    from mlcd.mlflow_server import LocalMlflowServer

    mlflow_cmd = LocalMlflowServer(root=settings.mlflow_dir, port=ports.mlflow).command()
    airflow = _bin("airflow")
    return [
        Service("mlflow", mlflow_cmd, health_url=f"http://127.0.0.1:{ports.mlflow}/health"),
        Service("airflow-api-server", [airflow, "api-server", "--host", "127.0.0.1", "--port", str(ports.airflow)],
                health_url=f"http://127.0.0.1:{ports.airflow}/api/v2/monitor/health"),
        Service("airflow-scheduler", [airflow, "scheduler", "--skip-serve-logs"]),
        Service("airflow-dag-processor", [airflow, "dag-processor"]),
        Service("airflow-triggerer", [airflow, "triggerer", "--skip-serve-logs"]),
        Service("gateway", [_bin("mlcd"), "serve", "--port", str(ports.gateway)],
                # /healthz is 503 until a model is promoted, which is normal on a fresh platform.
                health_url=f"http://127.0.0.1:{ports.gateway}/metrics"),
    ]


def _pid_file(settings: Settings, name: str) -> Path:
    return settings.home / "run" / f"{name}.pid"


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (field 3 onwards), or ``None``."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()
    except OSError:
        return None


def process_identity(pid: int) -> dict[str, Any] | None:
    """What tells this process apart from a later one that reuses its pid: start time and command line.

    ``start_ticks`` is field 22 of ``/proc/<pid>/stat`` (clock ticks after boot): a reused pid cannot have the
    same one. ``None`` where there is no ``/proc`` (not Linux) or the process is gone.
    """
    fields = _proc_stat(pid)
    if fields is None or len(fields) < 20:
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return None
    return {"start_ticks": int(fields[19]), "cmdline": cmdline}


def _write_pid_file(settings: Settings, name: str, pid: int) -> None:
    record: dict[str, Any] = {"pid": pid, **(process_identity(pid) or {})}
    path = _pid_file(settings, name)
    tmp = path.with_suffix(".pid.tmp")
    tmp.unlink(missing_ok=True)
    write_private(tmp, json.dumps(record))
    os.replace(tmp, path)


def _read_pid_file(settings: Settings, name: str) -> dict[str, Any] | None:
    try:
        record = json.loads(_pid_file(settings, name).read_text())
    except (OSError, ValueError):
        return None
    # A bare number is a pid file of an older mlcd: it says nothing about which process it meant.
    return record if isinstance(record, dict) and isinstance(record.get("pid"), int) else None


def running_pid(settings: Settings, name: str) -> int | None:
    """The pid of a service we started that is still alive and still the same process, else ``None``.

    A pid file outlives its process and the kernel reuses pids, so a pid alone may name someone else's
    process by now: the start time recorded at start must still match.
    """
    record = _read_pid_file(settings, name)
    if record is None:
        return None
    pid = int(record["pid"])
    try:
        # Reap it if it is our own child that exited (a zombie still answers kill(pid, 0)).
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return None
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    fields = _proc_stat(pid)
    if fields is None:
        return pid if not Path("/proc/self/stat").exists() else None  # no /proc (not Linux): kill(pid, 0) said so
    if fields[0] == "Z":
        return None
    now = process_identity(pid)
    if now is None or "start_ticks" not in record:
        return None
    # The start time alone decides: Airflow's processes retitle themselves (setproctitle), so their command
    # line changes while they run; the one recorded at start is kept for people reading the file.
    if now["start_ticks"] != record["start_ticks"]:
        return None  # the pid was reused by another process
    return pid


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status < 500)
    except (urllib.error.URLError, OSError):
        return False


def start(service: Service, settings: Settings, env: dict[str, str]) -> int:
    existing = running_pid(settings, service.name)
    if existing:
        return existing
    from mlcd.logfiles import rotate

    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    rotate(settings.logs_dir / f"{service.name}.log")  # bounded: the child owns the file for its whole life
    log = open(settings.logs_dir / f"{service.name}.log", "ab")  # noqa: SIM115 - the child owns it
    from mlcd.envroles import env_for

    # Only the secrets of this service's role (a gateway never holds Airflow's JWT secret, MLflow none of ours).
    proc = subprocess.Popen(service.argv, stdout=log, stderr=subprocess.STDOUT,
                            env=env_for(service.name, {**env, **service.env}),
                            start_new_session=True, cwd=settings.project_root)
    _write_pid_file(settings, service.name, proc.pid)
    return proc.pid


def wait_healthy(service: Service, timeout: float = 120.0) -> bool:
    if service.health_url is None:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _healthy(service.health_url):
            return True
        time.sleep(1)
    return False


def up(settings: Settings | None = None, ports: Ports | None = None, *, with_gateway: bool = True) -> dict[str, str]:
    """Start every service that is not running yet; returns the URLs to open."""
    settings = settings or get_settings()
    ports = ports or Ports()
    _private_dir(settings.home / "run")
    env = platform_env(settings, ports)
    # Migrate once, before the scheduler and the api-server race to do it.
    subprocess.run([_bin("airflow"), "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL,
                   cwd=settings.project_root)
    ensure_pools(_bin("airflow"), env, settings.project_root)  # the train task's pool, before the scheduler
    todo = [s for s in services(settings, ports) if with_gateway or s.name != "gateway"]
    for service in todo:
        start(service, settings, env)
    for service in todo:
        if not wait_healthy(service):
            raise RuntimeError(f"{service.name} did not become healthy; see {settings.logs_dir / service.name}.log")
    return urls(settings, ports)


def urls(settings: Settings, ports: Ports) -> dict[str, str]:
    return {
        "airflow": f"http://127.0.0.1:{ports.airflow}",
        "mlflow": f"http://127.0.0.1:{ports.mlflow}",
        "gateway": f"http://127.0.0.1:{ports.gateway}",
        "login": f"{ADMIN_USER} / {airflow_password(settings) or '(see ' + str(settings.home / 'run') + ')'}",
        "logs": str(settings.logs_dir),
    }


def airflow_password(settings: Settings) -> str | None:
    try:
        return str(json.loads((settings.home / "run" / "airflow_passwords.json").read_text())[ADMIN_USER])
    except (OSError, ValueError, KeyError):
        return None


def down(settings: Settings | None = None, timeout: float = 20.0) -> list[str]:
    """Stop every service we started (whole process groups, all at once); returns the names stopped.

    Only a process whose start time still matches its pid file is signalled; a stale pid
    file (the process is gone and its pid may belong to someone else now) is removed without a signal.
    """
    settings = settings or get_settings()
    running: dict[str, int] = {}
    for path in sorted((settings.home / "run").glob("*.pid")):
        pid = running_pid(settings, path.stem)
        if pid:
            running[path.stem] = pid
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(running_pid(settings, name) for name in running):
        time.sleep(0.3)
    for name, pid in running.items():
        if running_pid(settings, name):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for path in (settings.home / "run").glob("*.pid"):
        path.unlink(missing_ok=True)
    return sorted(running)


def status(settings: Settings | None = None) -> dict[str, int | None]:
    settings = settings or get_settings()
    return {s.name: running_pid(settings, s.name) for s in services(settings, Ports())}


class AirflowApi:
    """A small client of the Airflow 3 REST API (``/api/v2``) with a token from ``/auth/token``."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._credentials = {"username": username, "password": password}
        self._token: str | None = None

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None, auth: bool = True) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        req = urllib.request.Request(f"{self.base_url}{path}", data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=30) as resp:
            payload = resp.read()
        return json.loads(payload) if payload else None

    def token(self) -> str:
        if self._token is None:
            self._token = str(self._request("POST", "/auth/token", self._credentials, auth=False)["access_token"])
        return self._token

    def dag_runs(self, dag_id: str, limit: int = 20) -> list[dict[str, Any]]:
        out = self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns?order_by=-run_after&limit={limit}")
        return list(out["dag_runs"])

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}"))

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        out = self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}/taskInstances")
        return list(out["task_instances"])

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> dict[str, Any]:
        return dict(self._request("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf or {}}))

    def unpause(self, dag_id: str) -> None:
        self._request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def dags(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/api/v2/dags?limit=100")["dags"])

    def get(self, path: str) -> Any:
        return self._request("GET", path)
