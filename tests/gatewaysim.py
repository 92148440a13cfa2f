"""A simulated gateway driven through the gateway's REAL metrics (``GatewayMetrics``: the same Prometheus
histogram buckets, counters and exposition text), so the engine sees exactly what it reads in production.

Traffic is Poisson at ``rate`` requests/s, each request routed to the holdback with probability
``holdback_weight`` and else to the canary with probability ``weight`` (percent, as the router sets them);
latencies are log-normal around each variant's median times a load factor shared by every variant (a CPU hog
slows everything on the machine at once). What users send is shared too: ``mix`` is the label mix of the inputs,
and each model's predicted classes follow it (its ``class_shares`` are what it predicts on MNIST's own mix), so a
change in what users send moves every variant's predictions at once. Used by the unit tests and by
``bench/rollback.py``.
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
from mlcd.rollout.router import RouteStatus
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
    """Stable, canary and holdback behind weighted routing, exporting the real gateway metrics.

    ``models`` maps each version to its behaviour, so a promotion, a holdback and a rollback simply route
    versions: the behaviour follows the version (a test changes ``models[v]`` to make a version break later).
    """

    def __init__(self, stable: Behaviour, canary: Behaviour, seed: int, stable_version: str = "1",
                 canary_version: str = "2") -> None:
        self.m = GatewayMetrics()
        self.rng = np.random.default_rng(seed)
        self.models = {stable_version: stable, canary_version: canary}
        self.versions: dict[str, str | None] = {"stable": stable_version, "canary": canary_version,
                                                "holdback": None}
        self.weight = 0  # percent, as the router sets it
        self.holdback_weight = 0  # percent of all traffic on the holdback
        self.load = 1.0  # latency multiplier shared by every variant
        self.mix = MNIST_SHARES.copy()  # the label mix of what users send now
        self.canary_on = True
        self.feedback_share = 0.0
        self.served = {"stable": 0, "canary": 0, "holdback": 0}
        self.generation = 0
        self._publish()

    @property
    def b(self) -> dict[str, Behaviour]:
        """Each serving variant's behaviour (the behaviour of the version it serves)."""
        return {variant: self.models[v] for variant, v in self.versions.items() if v is not None}

    # -- the router's side ---------------------------------------------------------------------------------
    def set_routes(self, stable: str, canary: str | None, weight: int, expected_generation: object = None, *,
                   holdback: str | None = None, holdback_weight: int = 0) -> RouteStatus:
        self.versions["stable"] = str(stable)
        if canary is not None:
            self.versions["canary"] = str(canary)
        self.canary_on = canary is not None
        self.weight = int(weight) if canary is not None else 0
        held = holdback is not None and holdback != stable and holdback_weight > 0
        self.versions["holdback"] = str(holdback) if held else None
        self.holdback_weight = int(holdback_weight) if held else 0
        self.generation += 1
        self._publish()
        return self.get_routes()

    def get_routes(self) -> RouteStatus:
        return RouteStatus(self.versions["stable"], self.versions["canary"] if self.canary_on else None,
                           self.weight, self.generation, self.versions["holdback"], self.holdback_weight)

    def _publish(self) -> None:
        self.m.set_served({"stable": self.versions["stable"],
                           "canary": self.versions["canary"] if self.canary_on else None,
                           "holdback": self.versions["holdback"]}, self.weight)
        self.m.set_holdback_weight(self.holdback_weight)

    # -- traffic -------------------------------------------------------------------------------------------
    def run(self, seconds: float, rate: float) -> None:
        total = int(self.rng.poisson(rate * seconds))
        n_h = int(self.rng.binomial(total, self.holdback_weight / 100.0)) if self.versions["holdback"] else 0
        n_c = int(self.rng.binomial(total - n_h, self.weight / 100.0)) if self.canary_on else 0
        for variant, n in (("canary", n_c), ("holdback", n_h), ("stable", total - n_c - n_h)):
            if n:
                self._serve(variant, n)

    def predicted_shares(self, b: Behaviour) -> np.ndarray:
        """What ``b`` predicts on today's mix: its MNIST-mix shares, reweighted by how the mix moved."""
        shares = np.asarray(b.class_shares, dtype=np.float64) * (self.mix / MNIST_SHARES)
        return shares / shares.sum()

    def _serve(self, variant: str, n: int) -> None:
        v = self.versions[variant]
        assert v is not None
        b, rng, m = self.models[v], self.rng, self.m
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
        for cls, k in enumerate(rng.multinomial(ok, self.predicted_shares(b))):
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
