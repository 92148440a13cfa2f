"""Airflow 3 with the CeleryExecutor, as a cluster runs it, on 127.0.0.1.

api-server, scheduler, dag-processor and triggerer (the control plane) plus two ``airflow celery worker``
processes. Metadata and Celery results live in Postgres, the broker is Redis. Every process has its own working
directory, ``HOME``, ``AIRFLOW_HOME``, log folder and ``MLCD_HOME``: the only things they share are the services
(Postgres, Redis, S3, MLflow, Prometheus) and the code (``dags/``, ``include/``), as pods built from one image do.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.rehearsal.services import REPO, VENV_BIN, Proc, base_env, free_port, http_ok, wait_for

ADMIN = "admin"
WORKERS = ("worker-a", "worker-b")
CONTROL_PLANE = ("api-server", "scheduler", "dag-processor", "triggerer")


@dataclass
class AirflowCluster:
    """Args:
        root: a temp folder; each process gets ``root/<name>/`` (cwd, home, logs, MLCD_HOME).
        metadata_url: SQLAlchemy URL of the Airflow metadata database (Postgres).
        result_backend: Celery result backend (``db+postgresql://…``).
        broker_url: Celery broker (``redis://…``).
        mlcd_env: the ``MLCD_*`` / MLflow / storage settings every process gets (never ``MLCD_HOME``).
    """

    root: Path
    metadata_url: str
    result_backend: str
    broker_url: str
    mlcd_env: Mapping[str, str]
    port: int = 0
    procs: dict[str, Proc] = field(default_factory=dict)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    _secrets: dict[str, str] = field(default_factory=lambda: {"jwt": secrets.token_urlsafe(32),
                                                              "api": secrets.token_urlsafe(32)})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def home_of(self, name: str) -> Path:
        return self.root / name

    def log_folder(self, name: str) -> Path:
        """Where this process writes task logs (a worker's logs stay on its own disk)."""
        return self.home_of(name) / "logs"

    def env_for(self, name: str) -> dict[str, str]:
        own = self.home_of(name)
        passwords = own / "passwords.json"
        if not passwords.exists():
            own.mkdir(parents=True, exist_ok=True)
            passwords.write_text(json.dumps({ADMIN: self.password}))
        env = base_env(own / "home", **dict(self.mlcd_env))
        env.update({
            "AIRFLOW_HOME": str(own / "airflow"),
            "MLCD_HOME": str(own / "mlcd-home"),  # its own, empty: nothing can meet through it
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.metadata_url,
            "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": self.result_backend,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.log_folder(name)),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API_AUTH__JWT_SECRET": self._secrets["jwt"],
            "AIRFLOW__API__SECRET_KEY": self._secrets["api"],
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        })
        return env

    def _airflow(self, name: str, *args: str) -> Proc:
        return Proc(name, [str(VENV_BIN / "airflow"), *args], self.env_for(name), self.home_of(name) / "cwd",
                    self.home_of(name) / f"{name}.log")

    def start(self) -> AirflowCluster:
        self.port = self.port or free_port()
        env = self.env_for("migrate")
        subprocess.run([str(VENV_BIN / "airflow"), "db", "migrate"], env=env, cwd=self.root, check=True,
                       capture_output=True)
        from mlcd.embedded import ensure_pools

        ensure_pools(str(VENV_BIN / "airflow"), env, self.root)
        commands: dict[str, list[str]] = {
            "api-server": ["api-server", "--host", "127.0.0.1", "--port", str(self.port)],
            "scheduler": ["scheduler", "--skip-serve-logs"],
            "dag-processor": ["dag-processor"],
            "triggerer": ["triggerer", "--skip-serve-logs"],
        }
        for worker in WORKERS:
            commands[worker] = ["celery", "worker", "--celery-hostname", f"{worker}@rehearsal", "--queues", "default",
                                "--concurrency", "1", "--skip-serve-logs"]
        for name, args in commands.items():
            self.procs[name] = self._airflow(name, *args).start()
        api = self.procs["api-server"]
        wait_for("airflow api-server", lambda: http_ok(f"{self.url}/api/v2/monitor/health"), 180, api.log, api.alive)
        for worker in WORKERS:
            proc = self.procs[worker]
            wait_for(f"celery {worker}", lambda p=proc: b"ready" in p.log.read_bytes(), 120, proc.log, proc.alive)
        return self

    def dead(self) -> list[str]:
        """Processes that exited (each should run until stopped)."""
        return [name for name, proc in self.procs.items() if not proc.alive()]

    def stop(self) -> None:
        # Workers first (no new task starts), then the control plane.
        for name in [*WORKERS, *reversed(CONTROL_PLANE)]:
            if name in self.procs:
                self.procs[name].stop()

    def api(self) -> Any:
        from mlcd.demo import PatientApi
        from mlcd.platform import AirflowApi

        return PatientApi(AirflowApi(self.url, ADMIN, self.password))

    def task_logs(self, worker: str, dag_id: str) -> dict[str, list[Path]]:
        """task_id → the try logs this worker wrote for ``dag_id`` (Airflow 3 layout: dag_id=/run_id=/task_id=)."""
        found: dict[str, list[Path]] = {}
        for path in self.log_folder(worker).glob(f"dag_id={dag_id}/run_id=*/task_id=*/**/*.log"):
            task = next(p for p in path.parts if p.startswith("task_id=")).removeprefix("task_id=")
            found.setdefault(task, []).append(path)
        return found

    def wait_dags(self, api: Any, wanted: set[str], timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = {d["dag_id"] for d in api.dags()}
            if wanted <= found:
                for dag_id in found:
                    api.unpause(dag_id)
                return
            time.sleep(2)
        raise TimeoutError(f"DAGs {sorted(wanted)} not parsed within {timeout:.0f}s; see "
                           f"{self.home_of('dag-processor')}")
