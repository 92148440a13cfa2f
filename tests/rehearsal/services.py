"""Real services for the cluster rehearsal, each a child process on a free 127.0.0.1 port with its own temp dir.

Every class starts one server the way a cluster runs it (Debian's Postgres, Redis and Prometheus; moto's S3
server; ``mlflow server`` on Postgres with artifacts in S3; ``mlcd serve`` pinned to one version per variant) and
stops exactly the processes it started (by process group). Nothing here is mocked and nothing shares a local
folder with anything else: each process gets its own working directory and ``HOME``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
AWS_KEY = "testing"  # moto accepts any key; these stand in for a Secret's (or a workload identity's) credentials
AWS_REGION = "us-east-1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env(home: Path, **extra: str) -> dict[str, str]:
    """A clean environment: nothing of the test process (no MLCD_HOME, no AIRFLOW_HOME, no AWS_*) leaks in.

    ``PYTHONPATH`` puts this checkout's ``include/`` first: it stands for the code baked into an image.
    """
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(home),
        "TMPDIR": str(home),
        "PYTHONPATH": str(REPO / "include"),
        "PYTHONUNBUFFERED": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        # Bounded CPU: 2 cores are shared by every process of the rehearsal.
        "OMP_NUM_THREADS": "1",
        "TF_NUM_INTRAOP_THREADS": "1",
        "TF_NUM_INTEROP_THREADS": "1",
        # MLflow 3's telemetry thread edits os.environ while requests iterates it (KeyError
        # '_MLFLOW_TELEMETRY_SESSION_ID' seen failing an evaluate try here); no telemetry leaves this machine anyway.
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    env.update(extra)
    return env


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(resp.status < 500)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_for(what: str, check: Callable[[], bool], timeout: float, log: Path | None = None,
             alive: Callable[[], bool] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if alive is not None and not alive():
            break
        time.sleep(0.5)
    tail = ""
    if log is not None and log.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
    raise RuntimeError(f"{what} not ready within {timeout:.0f}s\n{tail}")


# Every server started and not yet stopped: a safety net stops them at the end of the session (conftest) even
# when a fixture's own finaliser never ran.
_LIVE: list[Any] = []


def track(thing: Any) -> Any:
    """Put a server started elsewhere (e.g. tests/pgserver.py's) under the safety net; returns it."""
    _LIVE.append(thing)
    return thing


def untrack(thing: Any) -> None:
    if thing in _LIVE:
        _LIVE.remove(thing)


def stop_leftovers() -> list[str]:
    """Stop whatever is still running (newest first); returns what it stopped."""
    stopped = []
    while _LIVE:
        thing = _LIVE.pop()
        stopped.append(getattr(thing, "name", type(thing).__name__))
        thing.stop()
    return stopped


@dataclass(eq=False)
class Proc:
    """One child process in its own session (so the whole group can be stopped), logging to a file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        out.close()
        _LIVE.append(self)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        # Children that outlived the leader (task runners, pool workers) are in the same group.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        self.process = None
        if self in _LIVE:
            _LIVE.remove(self)


def cleanup(*roots: Path) -> None:
    """Remove a stopped service's folders (kept for a post-mortem when MLCD_REHEARSAL_KEEP is set)."""
    if os.environ.get("MLCD_REHEARSAL_KEEP"):
        return
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)


def private_tmp(prefix: str) -> Path:
    """A new folder under the system temp dir (not pytest's 700 tree: Postgres runs as its own user)."""
    return Path(tempfile.mkdtemp(prefix=f"mlcd-rehearsal-{prefix}-"))


# ------------------------------------------------------------------------------------------------------- Redis
@dataclass
class Redis:
    root: Path
    port: int = 0
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Redis:
        self.port = self.port or free_port()
        self.proc = Proc("redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                                   "--appendonly", "no", "--dir", str(self.root)],
                         base_env(self.root / "home"), self.root, self.root / "redis.log").start()

        def ping() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    return sock.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        wait_for("redis", ping, 30, self.proc.log, self.proc.alive)
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
        cleanup(self.root)


# ---------------------------------------------------------------------------------------------------- S3 (moto)
@dataclass
class S3Server:
    """moto's standalone S3 server; used only through s3fs/boto3 with an endpoint URL, exactly as real S3."""

    root: Path
    buckets: tuple[str, ...]
    port: int = 0
    proc: Proc | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs options, as ``MLCD_STORAGE_OPTIONS`` carries them."""
        return {"key": AWS_KEY, "secret": AWS_KEY,
                "client_kwargs": {"endpoint_url": self.endpoint, "region_name": AWS_REGION}}

    @property
    def aws_env(self) -> dict[str, str]:
        """The standard AWS variables (what a Secret or workload identity gives a pod on a cluster)."""
        return {"AWS_ACCESS_KEY_ID": AWS_KEY, "AWS_SECRET_ACCESS_KEY": AWS_KEY, "AWS_DEFAULT_REGION": AWS_REGION,
                "AWS_ENDPOINT_URL": self.endpoint}

    def filesystem(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(**self.storage_options, skip_instance_cache=True)

    def start(self) -> S3Server:
        self.port = self.port or free_port()
        self.proc = Proc("moto", [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                         base_env(self.root / "home"), self.root, self.root / "moto.log").start()
        wait_for("moto S3 server", lambda: http_ok(f"{self.endpoint}/moto-api/"), 60, self.proc.log, self.proc.alive)
        import boto3

        # boto3, not s3fs.mkdir: s3fs sends a LocationConstraint, which us-east-1 refuses (as real S3 does).
        client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=AWS_KEY,
                              aws_secret_access_key=AWS_KEY, region_name=AWS_REGION)
        for bucket in self.buckets:
            client.create_bucket(Bucket=bucket)
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
        cleanup(self.root)


# ------------------------------------------------------------------------------------------------------ MLflow
@dataclass
class MlflowServer:
    """``mlflow server`` with its backend store in Postgres and its artifacts proxied to ``s3://``."""

    root: Path
    backend_uri: str
    artifacts: str  # s3://bucket/prefix
    s3: S3Server
    port: int = 0
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MlflowServer:
        self.port = self.port or free_port()
        env = base_env(self.root / "home", MLFLOW_S3_ENDPOINT_URL=self.s3.endpoint,
                       MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **self.s3.aws_env)
        argv = [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", self.backend_uri, "--artifacts-destination",
                self.artifacts, "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        self.proc = Proc("mlflow", argv, env, self.root / "cwd", self.root / "mlflow.log").start()
        wait_for("mlflow server", lambda: http_ok(f"{self.url}/health"), 180, self.proc.log, self.proc.alive)
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
        cleanup(self.root)


# -------------------------------------------------------------------------------------------------- Prometheus
@dataclass
class Prometheus:
    """Debian's Prometheus scraping the gateways every second (file-based discovery, as a cluster's pod SD)."""

    root: Path
    targets: list[dict[str, Any]] = field(default_factory=list)  # file_sd entries: {"targets": [...], "labels": {...}}
    port: int = 0
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_targets(self, targets: list[dict[str, Any]]) -> None:
        self.targets = targets
        tmp = self.root / "targets.json.tmp"
        tmp.write_text(json.dumps(targets))
        os.replace(tmp, self.root / "targets.json")

    def start(self) -> Prometheus:
        self.port = self.port or free_port()
        self.write_targets(self.targets)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [{
                "job_name": "mlcd-gateway",
                "file_sd_configs": [{"files": [str(self.root / "targets.json")], "refresh_interval": "1s"}],
            }],
        }
        (self.root / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        argv = ["prometheus", f"--config.file={self.root / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.root / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h", "--web.enable-lifecycle"]
        self.proc = Proc("prometheus", argv, base_env(self.root / "home"), self.root, self.root / "prometheus.log").start()
        wait_for("prometheus", lambda: http_ok(f"{self.url}/-/ready"), 60, self.proc.log, self.proc.alive)
        return self

    def query(self, promql: str) -> list[dict[str, Any]]:
        from urllib.parse import urlencode

        with urllib.request.urlopen(f"{self.url}/api/v1/query?{urlencode({'query': promql})}", timeout=5) as resp:
            body = json.loads(resp.read())
        return list(body["data"]["result"])

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
        cleanup(self.root)


# ----------------------------------------------------------------------------------------------------- Gateway
# What the gateway Deployments get from their Secret: the /feedback token, and one signing key for every replica.
FEEDBACK_TOKEN = "rehearsal-feedback-token"
GATEWAY_SECRET = "rehearsal-gateway-signing-key"


@dataclass
class Gateway:
    """One ``mlcd serve`` process pinned to a version and labelled with its variant (a Deployment per variant)."""

    root: Path
    variant: str
    version: str
    port: int
    env: Mapping[str, str]
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180.0) -> Gateway:
        home = self.root / "home"
        env = base_env(home, **dict(self.env), MLCD_SERVE_VERSION=self.version, MLCD_SERVE_VARIANT=self.variant,
                       MLCD_HOME=str(self.root / "mlcd-home"), MLCD_FEEDBACK_TOKEN=FEEDBACK_TOKEN,
                       MLCD_GATEWAY_SECRET=GATEWAY_SECRET)
        argv = [str(VENV_BIN / "python"), "-m", "mlcd.cli", "serve", "--port", str(self.port)]
        self.proc = Proc(f"gateway-{self.variant}", argv, env, self.root / "cwd",
                         self.root / f"gateway-{self.variant}-v{self.version}.log").start()
        wait_for(f"gateway {self.variant} v{self.version}", lambda: http_ok(f"{self.url}/healthz"), timeout,
                 self.proc.log, self.proc.alive)
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
        cleanup(self.root)
