"""Metrics providers without a Prometheus server: PromQL building, parsing of real ``/api/v1/query`` answers
(shapes copied from Prometheus 2.42's answers to :func:`build_query`), errors, and the settings that choose one.

The same query against a real Prometheus scraping real gateways: tests/integration/test_prometheus_metrics.py.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from mlcd.mlflow_server import free_port
from mlcd.rollout.providers import (
    COUNTER_PARTS,
    GatewayMetrics,
    MetricsProvider,
    MetricsUnavailable,
    PrometheusMetrics,
    build_query,
    check_selector,
    parse_query_response,
    provider_from_settings,
    scrape_from_settings,
)
from mlcd.rollout.router import RouteStatus

pytestmark = pytest.mark.unit

TS = 1795943382.117


def _row(part: str, value: str, **labels: str) -> dict[str, Any]:
    return {"metric": {"mlcd_part": part, **labels}, "value": [TS, value]}


def _answer(*rows: dict[str, Any]) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "vector", "result": list(rows)}}


CANARY = {"variant": "canary", "version": "2"}
STABLE = {"variant": "stable", "version": "1"}
REAL = _answer(
    _row("requests", "3", **CANARY),
    _row("errors", "1", **CANARY),
    _row("latency_bucket", "1", le="0.003", **CANARY),
    _row("latency_bucket", "3", le="+Inf", **CANARY),
    _row("latency_count", "3", **CANARY),
    _row("latency_sum", "0.018000000000000002", **CANARY),
    _row("predictions", "2", predicted_class="3", **CANARY),
    _row("predictions", "1", predicted_class="0", **CANARY),
    _row("feedback", "1", correct="false", **CANARY),
    _row("feedback", "4", correct="true", **CANARY),
    _row("requests", "7", **STABLE),
    _row("fallbacks", "2", **STABLE),
    _row("served", "1", **CANARY),
    _row("served", "1", **STABLE),
    _row("weight", "0.25"),
)


# --- PromQL ----------------------------------------------------------------------------------------------------

def test_the_query_sums_every_counter_family_by_variant_and_version_over_the_lookback() -> None:
    q = build_query(lookback="90m")
    parts = q.split(" or ")
    assert len(parts) == len(COUNTER_PARTS) + 2  # every counter family, the served versions, the weight
    for part, (metric, extra) in COUNTER_PARTS.items():
        by = ", ".join(("variant", "version", *extra))
        assert f'label_replace(sum by ({by}) (last_over_time({metric}[90m])), "mlcd_part", "{part}", "", "")' in q
    assert 'label_replace(max by (variant, version) (mlcd_gateway_model_info) == 1, "mlcd_part", "served"' in q
    assert 'label_replace(max(mlcd_gateway_canary_weight), "mlcd_part", "weight", "", "")' in q
    # model_info is read now (stale pods drop out at once), not over the lookback.
    assert "last_over_time(mlcd_gateway_model_info" not in q


def test_a_selector_narrows_every_series() -> None:
    q = build_query('namespace="mlcd", job=~"gw.*"')
    assert q.count('{namespace="mlcd", job=~"gw.*"}') == len(COUNTER_PARTS) + 2
    assert build_query("{}") == build_query("")
    assert check_selector('{a="x,y", b!="z"}') == 'a="x,y", b!="z"'  # commas inside values are not separators


@pytest.mark.parametrize("selector", ['namespace=mlcd', '"x"="y"', 'a="b"} or vector(1) or {c="d"', 'a="b" c="d"'])
def test_a_malformed_selector_is_refused_before_any_query(selector: str) -> None:
    with pytest.raises(ValueError, match="MLCD_PROMETHEUS_SELECTOR"):
        PrometheusMetrics("http://127.0.0.1:9", selector=selector)


@pytest.mark.parametrize("lookback", ["1 hour", "", "h1", "1h; drop"])
def test_a_malformed_lookback_is_refused(lookback: str) -> None:
    with pytest.raises(ValueError, match="lookback"):
        PrometheusMetrics("http://127.0.0.1:9", lookback=lookback)


def test_the_request_pins_the_evaluation_time() -> None:
    p = PrometheusMetrics("http://prom:9090/", clock=lambda: 1700000000.5)
    url = p.request_url(1700000000.5)
    assert url.startswith("http://prom:9090/api/v1/query?query=label_replace")
    assert url.endswith("&time=1700000000.500")


# --- parsing real answers ------------------------------------------------------------------------------------

def test_a_real_answer_becomes_the_counters_the_engine_diffs() -> None:
    scrape = parse_query_response(REAL)
    c = scrape.counters[("canary", "2")]
    assert (c.requests, c.errors, c.latency_count) == (3.0, 1.0, 3.0)
    assert c.latency_sum == pytest.approx(0.018)
    assert c.buckets == {0.003: 1.0, float("inf"): 3.0}
    assert c.classes == {3: 2.0, 0: 1.0}
    assert (c.feedback_correct, c.feedback_total) == (4.0, 5.0)
    s = scrape.counters[("stable", "1")]
    assert (s.requests, s.fallbacks, s.errors) == (7.0, 2.0, 0.0)
    assert scrape.served == {"canary": "2", "stable": "1"}
    assert scrape.canary_weight == 0.25


def test_a_rolling_update_serving_two_versions_of_a_variant_reports_the_newer() -> None:
    scrape = parse_query_response(_answer(_row("served", "1", variant="stable", version="9"),
                                          _row("served", "1", variant="stable", version="10")))
    assert scrape.served == {"stable": "10"}  # numerically newer, not "9" > "10" as strings


def test_an_empty_answer_is_no_counters_and_nothing_served() -> None:
    scrape = parse_query_response(_answer())
    assert (scrape.counters, scrape.served, scrape.canary_weight) == ({}, {}, 0.0)
    nan_weight = parse_query_response(_answer(_row("weight", "NaN")))
    assert nan_weight.canary_weight == 0.0


def test_series_without_variant_or_version_are_not_attributed() -> None:
    scrape = parse_query_response(_answer(_row("requests", "5", variant="canary"), _row("requests", "2", **STABLE)))
    assert list(scrape.counters) == [("stable", "1")]


@pytest.mark.parametrize(("body", "match"), [
    ({"status": "error", "errorType": "bad_data",
      "error": 'invalid parameter "query": 1:4: parse error: unexpected end of input inside braces'}, "bad_data"),
    ({"status": "error", "errorType": "timeout", "error": "query timed out in expression evaluation"}, "timeout"),
    ({"status": "success", "data": {"resultType": "matrix", "result": []}}, "expected a vector"),
    (_answer(_row("weight", "25")), "0-1 ratio"),
])
def test_an_error_answer_is_metrics_unavailable(body: dict[str, Any], match: str) -> None:
    with pytest.raises(MetricsUnavailable, match=match):
        parse_query_response(body, "prometheus http://prom:9090")


# --- over HTTP (a stdlib server answering canned Prometheus answers) -------------------------------------------

@contextmanager
def _answering(status: int, body: bytes, path: str = "/api/v1/query?query=") -> Iterator[str]:
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            seen.append(self.path)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        assert seen and all(p.startswith(path) for p in seen)


def test_prometheus_metrics_reads_over_http_and_is_a_provider() -> None:
    with _answering(200, json.dumps(REAL).encode()) as url:
        provider = PrometheusMetrics(url)
        assert isinstance(provider, MetricsProvider)
        assert provider.scrape().counters[("stable", "1")].requests == 7.0


def test_the_route_says_what_is_served_on_a_cluster() -> None:
    """A rolled-back canary's Deployment still runs (model_info says canary 2); the route at 0 % says no canary."""
    with _answering(200, json.dumps(REAL).encode()) as url:
        routed = PrometheusMetrics(url, routes=lambda: RouteStatus("1", None, 0))
        scrape = routed.scrape()
        assert scrape.served == {"stable": "1"} and scrape.canary_weight == 0.0
        assert scrape.counters[("canary", "2")].requests == 3.0  # its counts are still there
        at_25 = PrometheusMetrics(url, routes=lambda: RouteStatus("1", "2", 25)).scrape()
        assert at_25.served == {"stable": "1", "canary": "2"} and at_25.canary_weight == 0.25

        def broken() -> RouteStatus:
            raise RuntimeError("kubernetes GET httproutes/mlcd-gateway: 403 Forbidden")

        with pytest.raises(MetricsUnavailable, match="403 Forbidden"):
            PrometheusMetrics(url, routes=broken).scrape()


@pytest.mark.parametrize(("status", "body", "match"), [
    (400, b'{"status":"error","errorType":"bad_data","error":"parse error"}', r"bad_data: parse error \(HTTP 400\)"),
    (503, b"Service Unavailable", "HTTP 503"),
    (200, b"<html>a proxy's login page</html>", "not JSON"),
    (200, b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{}}]}}', "unexpected shape"),
])
def test_bad_http_answers_are_one_clear_error(status: int, body: bytes, match: str) -> None:
    with _answering(status, body) as url:
        with pytest.raises(MetricsUnavailable, match=match) as err:
            PrometheusMetrics(url).scrape()
    assert str(err.value).startswith(f"prometheus {url}")
    assert "\n" not in str(err.value)


def test_unreachable_sources_are_metrics_unavailable_and_oserrors() -> None:
    port = free_port()  # nothing listens there
    for provider in (PrometheusMetrics(f"http://127.0.0.1:{port}", timeout=2),
                     GatewayMetrics(f"http://127.0.0.1:{port}", timeout=2)):
        with pytest.raises(MetricsUnavailable, match=f"127.0.0.1:{port}") as err:
            provider.scrape()
        assert isinstance(err.value, OSError)  # existing retry loops treat it as a restarting gateway


def test_gateway_metrics_refuses_text_it_cannot_read() -> None:
    with _answering(200, b"mlcd_gateway_canary_weight 25\n", path="/metrics") as url:
        with pytest.raises(MetricsUnavailable, match="0-1 ratio"):
            GatewayMetrics(url).scrape()


# --- settings --------------------------------------------------------------------------------------------------

def test_the_default_is_the_gateways_own_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MLCD_METRICS_PROVIDER", "MLCD_PROMETHEUS_URL", "MLCD_ROUTER_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLCD_GATEWAY_URL", "http://gw:8000")
    assert provider_from_settings() == GatewayMetrics("http://gw:8000")
    assert provider_from_settings("http://other:8000") == GatewayMetrics("http://other:8000")


def test_prometheus_is_chosen_by_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLCD_ROUTER_BACKEND", raising=False)
    monkeypatch.setenv("MLCD_METRICS_PROVIDER", "Prometheus")
    monkeypatch.setenv("MLCD_PROMETHEUS_URL", "http://prometheus.monitoring:9090")
    monkeypatch.setenv("MLCD_PROMETHEUS_SELECTOR", 'namespace="mlcd"')
    monkeypatch.setenv("MLCD_PROMETHEUS_LOOKBACK", "2h")
    provider = provider_from_settings("http://gw:8000")
    assert isinstance(provider, PrometheusMetrics)
    assert (provider.url, provider.selector, provider.lookback, provider.routes) == (
        "http://prometheus.monitoring:9090", 'namespace="mlcd"', "2h", None)
    assert provider.source == "prometheus http://prometheus.monitoring:9090"


@pytest.mark.parametrize(("env", "match"), [
    ({"MLCD_METRICS_PROVIDER": "statsd"}, "unknown MLCD_METRICS_PROVIDER 'statsd'"),
    ({"MLCD_METRICS_PROVIDER": "prometheus"}, "needs MLCD_PROMETHEUS_URL"),
    ({"MLCD_METRICS_PROVIDER": "prometheus", "MLCD_PROMETHEUS_URL": "http://p:9090",
      "MLCD_PROMETHEUS_SELECTOR": "namespace=mlcd"}, "MLCD_PROMETHEUS_SELECTOR"),
])
def test_a_misconfigured_provider_fails_once_at_setup(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                                      match: str) -> None:
    for name in ("MLCD_PROMETHEUS_URL", "MLCD_PROMETHEUS_SELECTOR", "MLCD_ROUTER_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=match):
        scrape_from_settings()


def test_scrape_from_settings_reads_the_gateway_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLCD_METRICS_PROVIDER", raising=False)
    text = b'mlcd_gateway_requests_total{variant="canary",version="4"} 9\nmlcd_gateway_canary_weight 0.05\n'
    with _plain(text) as url:
        scrape = scrape_from_settings()(url)
    assert scrape.counters[("canary", "4")].requests == 9.0 and scrape.canary_weight == 0.05


@contextmanager
def _plain(body: bytes) -> Iterator[str]:
    from tests.gatewaysim import serve_metrics

    with serve_metrics(lambda: body) as url:
        yield url


def test_a_pinned_gateway_must_name_a_known_variant(tmp_path: Any) -> None:
    """Prometheus sums each variant's pods by this label: a typo would hide the canary from the analysis."""
    from mlcd.serving.config import GatewayConfig

    base = {"model_name": "m", "tracking_uri": "http://x", "admin_token": None, "state_path": tmp_path / "s.json"}
    assert GatewayConfig(**base, pinned_version="2", pinned_variant="canary").pinned_variant == "canary"
    with pytest.raises(ValueError, match="MLCD_SERVE_VARIANT must be stable, canary or holdback, got 'Canary'"):
        GatewayConfig(**base, pinned_version="2", pinned_variant="Canary")
