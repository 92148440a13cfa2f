"""The Prometheus metrics provider against a REAL Prometheus server scraping REAL gateways on 127.0.0.1.

A cluster runs one gateway Deployment per variant; here that is two gateways pinned to one version each
(``pinned_version`` / ``pinned_variant``, as ``MLCD_SERVE_VERSION`` / ``MLCD_SERVE_VARIANT`` pin a pod), the
stable one serving a healthy model and the canary one a model that answers class 3 for every image. Prometheus
(Debian's binary, tests/promserver.py) scrapes both every second with static ``variant`` / ``version`` labels.
The counters read through Prometheus must equal the ones read from the two gateways' own ``/metrics``, and the
guard must reach the same verdict from either provider.

A second test replaces a "pod" (a synthetic target stops answering, a new one starts at 0) and checks the sums
stay monotonic, so the engine never mistakes a pod replacement for a restart of the whole variant.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import generate_latest

from mlcd.guard.judge import GuardThresholds
from mlcd.guard.watch import Decision, Guard, GuardConfig, GuardState
from mlcd.mlflow_server import free_port
from mlcd.rollout.metrics import SeriesCounters, diff
from mlcd.rollout.providers import GatewayMetrics, MetricsUnavailable, PrometheusMetrics, Scrape
from mlcd.rollout.router import RouteStatus
from mlcd.serving.config import GatewayConfig
from mlcd.serving.metrics import GatewayMetrics as GatewayRegistry
from mlcd.serving.server import GatewayServer
from tests.promserver import PrometheusServer, Target, prometheus, prometheus_binary

pytestmark = pytest.mark.integration

MODEL = "prom-provider-mnist"
TOKEN = "prom-provider-admin-token-0123456789"


WEIGHT = 50  # the HTTPRoute's split in this test: each variant's Service gets half of the requests


def _both(stable: GatewayMetrics, canary: GatewayMetrics) -> Scrape:
    """What one gateway serving both variants at ``WEIGHT`` % would show: the two pinned gateways' reads."""
    a, b = stable.scrape(), canary.scrape()
    return Scrape({**a.counters, **b.counters}, {**a.served, **b.served}, WEIGHT / 100)


def _send(url: str, images: np.ndarray, n: int) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        for k in range(n):
            r = client.post("/predict", json={"images": [images[k % len(images)].tolist()]})
            assert r.status_code == 200, r.text


def _same(a: SeriesCounters | None, b: SeriesCounters | None) -> None:
    assert a is not None and b is not None
    da, db = a.to_dict(), b.to_dict()
    latency_a, latency_b = da.pop("latency_sum"), db.pop("latency_sum")
    assert da == db
    assert latency_a == pytest.approx(latency_b, rel=1e-9)


@pytest.fixture(scope="module")
def prom_available() -> None:
    if prometheus_binary() is None:
        pytest.fail("prometheus is not installed: apt-get install prometheus (CI installs it)")


def test_prometheus_reads_the_same_counters_and_the_guard_the_same_verdict(
        prom_available: None, mlflow_server: Any, reference_data: Any, tmp_path: Path) -> None:
    from mlcd.registry import ModelRegistry
    from tests.modelkit import logged_models, register

    uris = logged_models(mlflow_server.url, reference_data.x_train[:2000], reference_data.y_train[:2000])
    stable_v = register(mlflow_server.url, MODEL, uris["healthy_a"])
    canary_v = register(mlflow_server.url, MODEL, uris["broken"])
    ModelRegistry(mlflow_server.url, MODEL).bootstrap_champion(stable_v, "tests")

    def pinned(version: str, variant: str) -> GatewayServer:
        config = GatewayConfig(model_name=MODEL, tracking_uri=mlflow_server.url, admin_token=TOKEN,
                               state_path=tmp_path / f"{variant}.json", pinned_version=version,
                               pinned_variant=variant)
        return GatewayServer(config, free_port())

    images = reference_data.x_test[:500]
    with ExitStack() as stack:
        stable_gw = stack.enter_context(pinned(stable_v, "stable"))
        canary_gw = stack.enter_context(pinned(canary_v, "canary"))
        targets = [Target(stable_gw.url.split("//")[1], {"variant": "stable", "version": stable_v}),
                   Target(canary_gw.url.split("//")[1], {"variant": "canary", "version": canary_v})]
        prom = stack.enter_context(prometheus(targets, tmp_path / "prom"))
        prom.wait_for_targets()
        gateway = (GatewayMetrics(stable_gw.url), GatewayMetrics(canary_gw.url))
        promql = PrometheusMetrics(prom.url)
        # On a cluster the HTTPRoute says what users are served and at which weight (a pinned gateway cannot
        # know the split); here a RouteStatus stands in for the route the Kubernetes router reads.
        routed = PrometheusMetrics(prom.url, routes=lambda: RouteStatus(stable_v, canary_v, WEIGHT))

        # Each pinned gateway reports the variant it serves (model_info), and Prometheus sees both.
        import time

        prom.wait_for_scrape_after(time.time())
        first_gw, first_prom = _both(*gateway), promql.scrape()
        assert first_gw.served == first_prom.served == {"stable": stable_v, "canary": canary_v}
        assert first_prom.canary_weight == 0.0  # pinned gateways export no split: the route has it

        config = GuardConfig("http://unused.invalid", version=canary_v, poll_interval_s=1.0,
                             thresholds=GuardThresholds(min_predictions=40))
        guards = {"gateway": Guard(config, lambda _url: _both(*gateway)),
                  "prometheus": Guard(config, lambda _url: routed.scrape())}
        states: dict[str, GuardState] = {}
        for name, guard in guards.items():
            first = guard.poll()
            assert first.decision is Decision.WATCH and first.state.version == canary_v, (name, first.reason)
            states[name] = first.state

        # Traffic as the HTTPRoute would split it at 50 %: each variant's Service gets its share. The engine
        # learns the stable side's class mix in the first interval and tests the canary against it from the next.
        rounds, per_round = 3, 80
        results: dict[str, Any] = {}
        before_prom = first_prom
        served_rounds = 0
        for _round in range(rounds):
            served_rounds += 1
            threads = [threading.Thread(target=_send, args=(url, images, per_round))
                       for url in (stable_gw.url, canary_gw.url)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            prom.wait_for_scrape_after(time.time())
            after_gw, after_prom = _both(*gateway), promql.scrape()
            for key in (("stable", stable_v), ("canary", canary_v)):
                _same(after_gw.counters.get(key), after_prom.counters.get(key))
                window = diff(before_prom.counters.get(key), after_prom.counters.get(key))
                assert window.requests == per_round, (key, window)
            before_prom = after_prom
            results = {name: guard.poll(states[name]) for name, guard in guards.items()}
            states = {name: r.state for name, r in results.items()}
            verdicts = {name: r.verdict.as_dict() if r.verdict is not None else None for name, r in results.items()}
            assert verdicts["gateway"] == verdicts["prometheus"]  # the same evidence, poll by poll
            assert results["gateway"].decision is results["prometheus"].decision
            if results["gateway"].decision is not Decision.WATCH:
                break
        assert after_prom.counters[("canary", canary_v)].classes == {3: float(per_round * served_rounds)}  # one class
        for name, result in results.items():
            assert result.decision is Decision.BREACH, (name, result.reason)
        verdict = results["prometheus"].verdict.as_dict()
        failed = {c["name"] for c in verdict["checks"] if c["outcome"] == "fail"}
        assert "class_distribution" in failed, verdict


class _Switchable:
    """A ``/metrics`` endpoint whose body can be swapped, or which can die (503) like a deleted pod."""

    def __init__(self, body: Callable[[], bytes]) -> None:
        self.body: Callable[[], bytes] | None = body

    @contextmanager
    def serve(self) -> Iterator[str]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if owner.body is None:
                    self.send_response(503)
                    self.end_headers()
                    return
                data = owner.body()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        server = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield f"127.0.0.1:{server.server_port}"
        finally:
            server.shutdown()


def _pod(requests: int) -> GatewayRegistry:
    reg = GatewayRegistry()
    reg.set_served({"stable": "1"}, 0)
    reg.requests.labels("1", "stable").inc(requests)
    reg.latency.labels("1", "stable").observe(0.004)
    reg.predictions.labels("1", "stable", "7").inc(requests)
    return reg


def _wait_for(prom: PrometheusServer, check: Callable[[], bool], timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise AssertionError(f"condition not met within {timeout:.0f}s; prometheus log: {prom.log_tail(500)}")


def test_a_replaced_pod_does_not_make_the_sums_drop(prom_available: None, tmp_path: Path) -> None:
    """Pod A (30 requests) is replaced by pod B (starting at 0, then 5): the sum goes 30 → 35, never down."""
    pod_a, pod_b = _pod(30), _pod(0)
    a = _Switchable(lambda: generate_latest(pod_a.registry))
    b = _Switchable(lambda: generate_latest(pod_b.registry))
    with a.serve() as addr_a, b.serve() as addr_b:
        b.body = None  # pod B does not exist yet
        targets = [Target(addr_a, {"variant": "stable", "version": "1", "pod": "a"}),
                   Target(addr_b, {"variant": "stable", "version": "1", "pod": "b"})]
        with prometheus(targets, tmp_path / "prom") as prom:
            provider = PrometheusMetrics(prom.url)

            def requests() -> float:
                s = provider.scrape().counters.get(("stable", "1"))
                return s.requests if s else -1.0

            _wait_for(prom, lambda: requests() == 30)
            # Pod A is deleted (its scrapes fail: Prometheus marks its series stale) and pod B starts at 0.
            a.body = None
            b.body = lambda: generate_latest(pod_b.registry)
            _wait_for(prom, lambda: prom.query('up{pod="a"}')["data"]["result"][0]["value"][1] == "0"
                      and prom.query('up{pod="b"}')["data"]["result"][0]["value"][1] == "1")
            plain = prom.query('sum(mlcd_gateway_requests_total{variant="stable"})')["data"]["result"]
            assert plain and float(plain[0]["value"][1]) == 0.0  # a plain sum dropped from 30 to 0 ...
            assert requests() == 30  # ... the provider's sum did not
            pod_b.requests.labels("1", "stable").inc(5)
            _wait_for(prom, lambda: requests() == 35)
            snap = provider.scrape()
            assert snap.counters[("stable", "1")].classes == {7: 30.0}  # B predicted nothing yet
            assert snap.served == {"stable": "1"}  # only the live pod says what serves


def test_an_unreadable_prometheus_is_one_clear_error(prom_available: None, tmp_path: Path) -> None:
    with prometheus([], tmp_path / "prom") as prom:
        url = prom.url
        assert PrometheusMetrics(url).scrape().counters == {}  # up, but no gateway scraped yet: no counters
        bad = PrometheusMetrics(url, selector='namespace=~"("')  # a matcher whose regex only Prometheus refuses
        with pytest.raises(MetricsUnavailable, match="bad_data"):
            bad.scrape()
    with pytest.raises(MetricsUnavailable, match="unreachable") as err:
        PrometheusMetrics(url, timeout=2).scrape()  # the server is gone
    assert isinstance(err.value, OSError)  # the loops that retry an unreachable gateway retry this too
