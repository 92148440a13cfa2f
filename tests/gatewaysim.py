"""A simulated gateway driven through the gateway's REAL metrics (``GatewayMetrics``: the same Prometheus
histogram buckets, counters and exposition text), so the engine sees exactly what it reads in production.

Traffic is Poisson at ``rate`` requests/s, each request routed to the canary with probability ``weight`` (0–1);
latencies are log-normal around each variant's median times a load factor shared by both variants (a CPU hog
slows everything on the machine at once). Used by the unit tests and by ``bench/rollback.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
from prometheus_client import generate_latest

from mlcd.guard.watch import Scrape, parse_scrape, scrape_from_families
from mlcd.rollout.metrics import Snapshot
from mlcd.serving.metrics import GatewayMetrics

# MNIST's label shares: a healthy model's predicted classes follow them closely.
MNIST_SHARES = np.array([0.0987, 0.1124, 0.0993, 0.1022, 0.0974, 0.0904, 0.0986, 0.1044, 0.0975, 0.0991])
MNIST_SHARES = MNIST_SHARES / MNIST_SHARES.sum()
ONE_CLASS = np.eye(10)[3]


@dataclass
class Behaviour:
    """How one simulated model behaves."""

    error_rate: float = 0.005
    median_latency_s: float = 0.004
    latency_sigma: float = 0.35
    class_shares: np.ndarray = field(default_factory=lambda: MNIST_SHARES)
    accuracy: float = 0.98


class SimGateway:
    """Stable and canary behind weighted routing, exporting the real gateway metrics."""

    def __init__(self, stable: Behaviour, canary: Behaviour, seed: int, stable_version: str = "1",
                 canary_version: str = "2") -> None:
        self.m = GatewayMetrics()
        self.rng = np.random.default_rng(seed)
        self.b = {"stable": stable, "canary": canary}
        self.versions = {"stable": stable_version, "canary": canary_version}
        self.weight = 0  # percent, as the router sets it
        self.load = 1.0  # latency multiplier shared by both variants
        self.canary_on = True
        self.feedback_share = 0.0
        self.served = {"stable": 0, "canary": 0}
        self._publish()

    # -- the router's side ---------------------------------------------------------------------------------
    def set_routes(self, stable: str, canary: str | None, weight: int) -> None:
        if stable != self.versions["stable"]:  # promotion: the canary's model now serves as stable
            self.b["stable"], self.versions["stable"] = self.b["canary"], stable
        self.canary_on = canary is not None
        self.weight = int(weight) if canary is not None else 0
        self._publish()

    def _publish(self) -> None:
        self.m.set_served({"stable": self.versions["stable"],
                           "canary": self.versions["canary"] if self.canary_on else None}, self.weight)

    # -- traffic -------------------------------------------------------------------------------------------
    def run(self, seconds: float, rate: float) -> None:
        total = int(self.rng.poisson(rate * seconds))
        n_c = int(self.rng.binomial(total, self.weight / 100.0)) if self.canary_on else 0
        for variant, n in (("canary", n_c), ("stable", total - n_c)):
            if n:
                self._serve(variant, n)

    def _serve(self, variant: str, n: int) -> None:
        b, v, rng, m = self.b[variant], self.versions[variant], self.rng, self.m
        self.served[variant] += n
        m.requests.labels(v, variant).inc(n)
        errors = int(rng.binomial(n, b.error_rate))
        if errors:
            m.errors.labels(v, variant).inc(errors)
        ok = n - errors
        lat = b.median_latency_s * self.load * np.exp(rng.normal(0.0, b.latency_sigma, ok))
        hist = m.latency.labels(v, variant)
        for x in lat:
            hist.observe(float(x))
        for cls, k in enumerate(rng.multinomial(ok, b.class_shares)):
            if k:
                m.predictions.labels(v, variant, str(cls)).inc(int(k))
        fb = int(rng.binomial(ok, self.feedback_share)) if self.feedback_share else 0
        if fb:
            right = int(rng.binomial(fb, b.accuracy))
            m.feedback.labels(v, variant, "true").inc(right)
            if fb - right:
                m.feedback.labels(v, variant, "false").inc(fb - right)

    # -- the scrapers' side --------------------------------------------------------------------------------
    def text(self) -> str:
        return generate_latest(self.m.registry).decode()

    def scrape(self, _url: str = "") -> Scrape:
        """What the guard reads: the exposition text, parsed as ``/metrics`` is."""
        return parse_scrape(self.text())

    def snapshot(self, _url: str = "") -> Snapshot:
        return self.scrape().counters

    def scrape_fast(self, _url: str = "") -> Scrape:
        """The same samples straight from the registry's ``collect()`` (no text round trip: the bench's many
        trials; the unit tests use :meth:`scrape`)."""
        return scrape_from_families(list(self.m.registry.collect()))


def behaviours(names: Sequence[str]) -> list[Behaviour]:
    """Named behaviours: ``healthy``, ``one_class``, ``errors`` (20 %), ``slow`` (2×), ``slower5`` (+5 %)."""
    table = {
        "healthy": Behaviour(),
        "one_class": Behaviour(class_shares=ONE_CLASS, accuracy=0.1),
        "errors": Behaviour(error_rate=0.2),
        "slow": Behaviour(median_latency_s=0.008),
        "slower5": Behaviour(median_latency_s=0.0042),
    }
    return [table[n] for n in names]


@contextmanager
def serve_metrics(body: Callable[[], bytes]) -> Iterator[str]:
    """A ``/metrics`` endpoint on a free 127.0.0.1 port answering ``body()`` per scrape; yields its base URL."""

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            data = body()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
