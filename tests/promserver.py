"""A real Prometheus server (Debian's ``prometheus``) on 127.0.0.1 for tests: start, wait for targets, stop.

Each target is a ``host:port`` with its own static labels (``variant`` / ``version``, as a cluster's scrape
config attaches them to each gateway Deployment's pods). Storage is a temp folder, scrapes every second by
default, and the server stops (SIGTERM, then SIGKILL) when the context ends::

    with prometheus([Target("127.0.0.1:8001", {"variant": "stable", "version": "1"})], tmp) as prom:
        prom.wait_for_targets()
        prom.query("up")

``PROMETHEUS_BIN`` overrides the binary (default ``/usr/bin/prometheus``, else ``prometheus`` on ``PATH``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlcd.mlflow_server import free_port


def prometheus_binary() -> str | None:
    """The Prometheus binary, or ``None`` when it is not installed."""
    env = os.environ.get("PROMETHEUS_BIN")
    if env:
        return env
    if Path("/usr/bin/prometheus").is_file():
        return "/usr/bin/prometheus"
    return shutil.which("prometheus")


@dataclass(frozen=True)
class Target:
    """One scrape target: ``address`` (``127.0.0.1:8000``), its static labels, and ``metrics_path``."""

    address: str
    labels: Mapping[str, str] = field(default_factory=dict)
    metrics_path: str = "/metrics"


def scrape_config(targets: Sequence[Target], interval_s: float = 1.0, job: str = "mlcd-gateway",
                  honor_labels: bool = False) -> dict[str, Any]:
    """The ``prometheus.yml`` for ``targets`` (one static group per target, so each keeps its own labels)."""
    paths = {t.metrics_path for t in targets}
    if len(paths) > 1:
        raise ValueError(f"one job scrapes one metrics path, got {sorted(paths)}")
    interval = f"{max(1, round(interval_s * 1000))}ms"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [{
            "job_name": job,
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "metrics_path": paths.pop() if paths else "/metrics",
            "honor_labels": honor_labels,
            "static_configs": [{"targets": [t.address], "labels": dict(t.labels)} for t in targets],
        }],
    }


class PrometheusServer:
    """A running Prometheus; :func:`prometheus` starts and stops it."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, workdir: Path, log_path: Path):
        self.process = process
        self.port = port
        self.workdir = workdir
        self.log_path = log_path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, params: Mapping[str, str] | None = None, timeout: float = 5.0) -> dict[str, Any]:
        """``GET /api/v1/<path>`` decoded (error answers too: Prometheus sends JSON with its 4xx/5xx)."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=timeout) as resp:  # noqa: S310
                return dict(json.loads(resp.read()))
        except urllib.error.HTTPError as exc:
            return dict(json.loads(exc.read()))

    def query(self, promql: str, at: float | None = None) -> dict[str, Any]:
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self.api("query", params)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:  # noqa: S310
                return resp.status == 200
        except OSError:
            return False

    def wait_for_targets(self, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Wait until every target was scraped successfully at least once; returns the active targets."""
        deadline = time.monotonic() + timeout
        active: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            active = self.api("targets").get("data", {}).get("activeTargets", [])
            if active and all(t.get("health") == "up" for t in active):
                return active
            time.sleep(0.25)
        raise TimeoutError(f"Prometheus targets not all up after {timeout:.0f}s: "
                           f"{[(t.get('scrapeUrl'), t.get('health'), t.get('lastError')) for t in active]}")

    def wait_for_scrape_after(self, moment: float, timeout: float = 30.0) -> None:
        """Wait until every target has been scraped after ``moment`` (epoch seconds): the TSDB holds what the
        targets exported at ``moment``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            active = self.api("targets").get("data", {}).get("activeTargets", [])
            if active and all(_epoch(t.get("lastScrape", "")) > moment and t.get("health") == "up" for t in active):
                return
            time.sleep(0.2)
        raise TimeoutError(f"Prometheus did not scrape every target after {moment} within {timeout:.0f}s")

    def stop(self, timeout: float = 15.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _epoch(rfc3339: str) -> float:
    """Prometheus' ``lastScrape`` (``2026-11-29T09:30:01.123456789Z``) as epoch seconds (0 when unparseable)."""
    from datetime import datetime

    if not rfc3339 or rfc3339.startswith("0001-"):
        return 0.0
    head, _, frac = rfc3339.rstrip("Z").partition(".")
    base = datetime.fromisoformat(head + "+00:00").timestamp()
    digits = "".join(ch for ch in frac if ch.isdigit())
    return base + (float(f"0.{digits}") if digits else 0.0)


@contextmanager
def prometheus(targets: Sequence[Target], workdir: Path, interval_s: float = 1.0, honor_labels: bool = False,
               start_timeout: float = 60.0) -> Iterator[PrometheusServer]:
    """Run Prometheus on a free 127.0.0.1 port scraping ``targets``; stopped when the block ends."""
    binary = prometheus_binary()
    if binary is None:
        raise RuntimeError("prometheus is not installed (Debian: apt-get install prometheus; or set PROMETHEUS_BIN)")
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(targets, interval_s, honor_labels=honor_labels)))
    port = free_port()
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - a fixed binary and arguments
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle",
             "--storage.tsdb.retention.time=1h", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
        )
    server = PrometheusServer(process, port, workdir, log_path)
    try:
        deadline = time.monotonic() + start_timeout
        while not server.ready():
            if process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {process.returncode}: {server.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"prometheus not ready after {start_timeout:.0f}s: {server.log_tail()}")
            time.sleep(0.1)
        yield server
    finally:
        server.stop()
