"""Rollout behaviour the other unit tests did not pin down, found by the mutation run (bench/mutation.py, issue 18).

Each test names the behaviour it checks: the spec's limits and defaults as the rollout acts on them, the gateway's
counters as the analysis reads them, the local router's HTTP protocol (against an HTTP server on 127.0.0.1 that
answers as the gateway's ``/admin/routes`` does; the real gateway is driven in tests/integration), the
Kubernetes client's configuration, and the wiring from settings.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from mlcd.rollout.metrics import (
    SeriesCounters,
    diff,
    histogram_quantile,
    parse_metrics,
    snapshot_from_dict,
    snapshot_to_dict,
    variant_stats,
    window_stats,
)
from mlcd.rollout.router import (
    KubernetesHTTPRouteRouter,
    LocalGatewayRouter,
    RouteConflict,
    RouterError,
    VersionRefused,
    kubernetes_api,
    router_from_settings,
)
from mlcd.rollout.spec import (
    Action,
    Outcome,
    RolloutSpec,
    StepVerdict,
    VariantStats,
    next_action,
    next_weight,
)

pytestmark = pytest.mark.unit


# ------------------------------------------------------------------------------------------------ spec
def test_the_default_rollout_walks_5_25_50_100_and_stops_after() -> None:
    spec = RolloutSpec()
    walk, weight = [], 0
    while (nxt := next_weight(spec, weight)) is not None:
        walk.append(nxt)
        weight = nxt
    assert walk == [5, 25, 50, 100]
    assert next_weight(spec, 30) == 50  # a weight between steps goes to the next one above it


def test_a_default_rollout_aborts_on_its_first_failed_window_and_stretches_three_times() -> None:
    spec = RolloutSpec()
    assert next_action(spec, ["pass", "fail"]) is Action.ABORT_FAILED
    assert next_action(spec, ["inconclusive"] * 3, 3) is Action.REPEAT
    assert next_action(spec, ["inconclusive"] * 4, 4) is Action.ABORT_INCONCLUSIVE
    assert spec.max_window_s == 240.0  # 60 s × (3 repeats + the first window)


def test_a_pass_advances_and_anything_else_within_the_limits_repeats() -> None:
    spec = RolloutSpec(failure_limit=1)
    assert next_action(spec, ["pass"]) is Action.ADVANCE
    assert next_action(spec, ["inconclusive"], 1) is Action.REPEAT
    assert next_action(spec, ["fail"]) is Action.REPEAT  # one failure tolerated, the window is repeated
    assert next_action(spec, ["fail", "pass"]) is Action.ADVANCE
    assert next_action(spec, ["fail", "fail"]) is Action.ABORT_FAILED
    with pytest.raises(ValueError, match="at least one outcome"):
        next_action(spec, [])


def test_the_smallest_valid_spec_is_accepted_and_anything_below_it_refused() -> None:
    RolloutSpec(min_requests=1, min_stable_requests=1, failure_limit=0, inconclusive_limit=0,
                max_error_rate_increase=0.0, max_p99_latency_ratio=1.0, p99_latency_slack_s=0.0,
                alpha=0.5, on_undecided="hold", steps=(100,))
    for bad in ({"min_requests": 0}, {"min_stable_requests": 0}, {"alpha": 0.0}, {"alpha": 1.0},
                {"failure_limit": -1}, {"inconclusive_limit": -1}, {"max_p99_latency_ratio": 0.99},
                {"max_error_rate_increase": -0.01}, {"p99_latency_slack_s": -0.001}, {"poll_interval_s": 0},
                {"analysis_window_s": 0}, {"on_undecided": "bogus"}, {"steps": (50, 50, 100)}, {"steps": (0, 100)}):
        with pytest.raises(ValueError):
            RolloutSpec(**bad)  # type: ignore[arg-type]


def test_the_engine_gets_the_spec_floors_and_the_smaller_minimum_for_latency() -> None:
    t = RolloutSpec(min_requests=40, min_stable_requests=20, max_error_rate_increase=0.02,
                    max_p99_latency_ratio=2.0, p99_latency_slack_s=0.01, alpha=0.01).guard_thresholds()
    assert (t.alpha, t.min_requests, t.min_predictions, t.min_latency_samples) == (0.01, 40, 40, 20)
    assert (t.min_error_rate_increase, t.min_latency_ratio, t.min_latency_increase_s) == (0.02, 2.0, 0.01)


def test_a_spec_survives_its_dict_form_and_an_empty_one_is_the_default() -> None:
    spec = RolloutSpec(steps=(10, 100), thresholds={"alpha": 0.01}, on_undecided="hold")
    data = spec.to_dict()
    assert data["steps"] == [10, 100] and data["thresholds"] == {"alpha": 0.01}
    assert RolloutSpec.from_dict(json.loads(json.dumps(data))) == spec
    assert RolloutSpec.from_dict(None) == RolloutSpec() == RolloutSpec.from_dict({})


def test_a_verdict_reads_as_a_person_needs_it() -> None:
    v = StepVerdict(Outcome.FAIL, ("errors up",), VariantStats(10, 2, 0.5, 10), VariantStats(0, 0))
    d = v.to_dict()
    assert d["outcome"] == "fail" and d["reasons"] == ["errors up"]
    assert d["canary"] == {"requests": 10, "errors": 2, "p99_latency_s": 0.5, "latency_samples": 10, "error_rate": 0.2}
    assert d["stable"]["error_rate"] is None  # no traffic: no rate, not 0


# ------------------------------------------------------------------------------------------------ counters
EXPOSITION = """\
# TYPE mlcd_gateway_requests_total counter
mlcd_gateway_requests_total{variant="canary",version="2"} 10.0
mlcd_gateway_requests_total{variant="stable",version="1"} 90.0
mlcd_gateway_requests_total{variant="canary"} 999.0
# TYPE mlcd_gateway_requests_created gauge
mlcd_gateway_requests_created{variant="canary",version="2"} 1.7e9
# TYPE mlcd_gateway_errors_total counter
mlcd_gateway_errors_total{variant="canary",version="2"} 3.0
# TYPE mlcd_gateway_fallbacks_total counter
mlcd_gateway_fallbacks_total{variant="canary",version="2"} 1.0
# TYPE mlcd_gateway_request_latency_seconds histogram
mlcd_gateway_request_latency_seconds_bucket{variant="canary",version="2",le="0.01"} 6.0
mlcd_gateway_request_latency_seconds_bucket{variant="canary",version="2",le="0.1"} 10.0
mlcd_gateway_request_latency_seconds_bucket{variant="canary",version="2",le="+Inf"} 10.0
mlcd_gateway_request_latency_seconds_count{variant="canary",version="2"} 10.0
mlcd_gateway_request_latency_seconds_sum{variant="canary",version="2"} 0.25
# TYPE mlcd_gateway_predictions_total counter
mlcd_gateway_predictions_total{variant="canary",version="2",predicted_class="3"} 7.0
mlcd_gateway_predictions_total{variant="canary",version="2",predicted_class="5"} 3.0
# TYPE mlcd_gateway_feedback_total counter
mlcd_gateway_feedback_total{variant="canary",version="2",correct="true"} 4.0
mlcd_gateway_feedback_total{variant="canary",version="2",correct="false"} 2.0
# TYPE other_requests_total counter
other_requests_total{variant="canary",version="2"} 500.0
"""


def test_the_gateway_counters_are_read_per_variant_and_version() -> None:
    snap = parse_metrics(EXPOSITION)
    assert set(snap) == {("canary", "2"), ("stable", "1")}  # a series without a version is not a variant's
    c = snap[("canary", "2")]
    assert (c.requests, c.errors, c.fallbacks) == (10.0, 3.0, 1.0)  # other metrics' and _created samples ignored
    assert c.buckets == {0.01: 6.0, 0.1: 10.0, math.inf: 10.0}
    assert (c.latency_count, c.latency_sum) == (10.0, 0.25)
    assert c.classes == {3: 7.0, 5: 3.0}
    assert (c.feedback_correct, c.feedback_total) == (4.0, 6.0)
    assert snap[("stable", "1")].requests == 90.0 and snap[("stable", "1")].classes == {}


def test_counters_survive_their_json_form_and_an_empty_record_counts_nothing() -> None:
    snap = parse_metrics(EXPOSITION)
    assert snapshot_from_dict(json.loads(json.dumps(snapshot_to_dict(snap)))) == snap
    empty = SeriesCounters.from_dict({})
    assert empty == SeriesCounters()
    assert variant_stats(empty) == VariantStats(0, 0, None, 0)


def test_two_periods_add_up_and_a_window_is_the_difference_of_two_scrapes() -> None:
    a = SeriesCounters(10, 1, 1, 10, 0.5, {0.1: 10.0}, {3: 10.0}, 2, 4)
    b = SeriesCounters(5, 2, 0, 5, 0.25, {0.1: 4.0, 1.0: 5.0}, {3: 1.0, 4: 4.0}, 1, 1)
    total = a + b
    assert total == SeriesCounters(15, 3, 1, 15, 0.75, {0.1: 14.0, 1.0: 5.0}, {3: 11.0, 4: 4.0}, 3, 5)
    assert diff(a, total) == SeriesCounters(5, 2, 0, 5, 0.25, {0.1: 4.0, 1.0: 5.0}, {3: 1.0, 4: 4.0}, 1, 1)
    assert diff(None, a) == a and diff(a, None) == SeriesCounters()
    restarted = SeriesCounters(requests=3, latency_count=3)
    assert diff(a, restarted) == restarted  # counters went down: the gateway restarted, the later scrape is all


def test_p99_is_interpolated_inside_its_bucket_and_none_without_observations() -> None:
    assert histogram_quantile(0.5, {0.1: 50.0, 0.2: 100.0, math.inf: 100.0}) == pytest.approx(0.1)
    assert histogram_quantile(0.75, {0.1: 50.0, 0.2: 100.0, math.inf: 100.0}) == pytest.approx(0.15)
    assert histogram_quantile(0.99, {0.1: 0.0, 0.2: 0.0, math.inf: 10.0}) == 0.2  # above the top finite bucket
    assert histogram_quantile(0.99, {math.inf: 10.0}) == math.inf  # no finite bucket at all
    assert histogram_quantile(0.0, {0.1: 0.0, 0.2: 10.0, math.inf: 10.0}) == 0.1  # an empty bucket: its bound
    assert histogram_quantile(0.5, {0.1: 5.0, 0.2: 10.0}) == pytest.approx(0.1)  # no +Inf bucket: the largest count
    assert histogram_quantile(0.99, {}) is None
    assert histogram_quantile(0.99, {0.1: 0.0, math.inf: 0.0}) is None
    stats = variant_stats(SeriesCounters(requests=10, errors=2, latency_count=10, buckets={0.1: 10.0, math.inf: 10.0}))
    assert stats.requests == 10 and stats.errors == 2 and stats.latency_samples == 10
    assert stats.p99_latency_s == pytest.approx(0.099)
    assert variant_stats(SeriesCounters(requests=10, buckets={0.1: 10.0})).p99_latency_s is None  # no latency count


def test_window_stats_of_a_version_between_two_scrapes_and_none_without_a_version() -> None:
    before = parse_metrics(EXPOSITION)
    line = 'mlcd_gateway_requests_total{variant="canary",version="2"}'
    after = parse_metrics(EXPOSITION.replace(f"{line} 10.0", f"{line} 15.0"))
    assert window_stats(before, after, "canary", "2").requests == 5
    assert window_stats(before, after, "canary", None) == VariantStats()
    assert window_stats(before, after, "canary", "7") == VariantStats()


# ------------------------------------------------------------------------------------------------ routers
class _Admin:
    """Answers ``/admin/routes`` as the gateway does; ``reply`` sets the next (status, body)."""

    def __init__(self) -> None:
        self.routes: dict[str, Any] = {"stable": "1", "canary": None, "canary_weight": 0, "generation": 4}
        self.reply: tuple[int, Any] | None = None
        self.seen: list[tuple[str, str, Any, str | None]] = []


@contextmanager
def _admin_server() -> Iterator[tuple[str, _Admin]]:
    admin = _Admin()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, body: Any) -> None:
            status, payload = admin.reply or (200, admin.routes)
            admin.reply = None
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            admin.seen.append((self.command, self.path, body, self.headers.get("Authorization")))
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self._answer(None)

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if admin.reply is None:
                admin.routes = {**body, "generation": admin.routes["generation"] + 1}
                admin.routes.pop("expected_generation", None)
            self._answer(body)

        def do_PATCH(self) -> None:  # noqa: N802 - http.server's name (the Kubernetes API's merge patch)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            admin.seen.append(("PATCH-TYPE", self.path, self.headers.get("Content-Type"), None))
            self._answer(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/", admin
    finally:
        server.shutdown()
        server.server_close()


def test_the_local_router_posts_the_routes_with_its_token_and_returns_what_the_gateway_serves() -> None:
    with _admin_server() as (url, admin):
        router = LocalGatewayRouter(url, "s3cret")
        assert router.get_routes().generation == 4
        status = router.set_routes("1", "2", 25, expected_generation=4)
        assert (status.stable, status.canary, status.canary_weight, status.generation) == ("1", "2", 25, 5)
        method, path, body, auth = admin.seen[-1]
        assert (method, path, auth) == ("POST", "/admin/routes", "Bearer s3cret")
        assert body == {"stable": "1", "canary": "2", "canary_weight": 25, "expected_generation": 4}
        router.set_routes("1", None, 40)  # no canary: weight 0, and no generation to compare with
        assert admin.seen[-1][2] == {"stable": "1", "canary": None, "canary_weight": 0}
        assert router.get_routes().canary_weight == 0


def test_the_local_router_tells_a_moved_route_a_refused_version_and_other_errors_apart() -> None:
    with _admin_server() as (url, admin):
        router = LocalGatewayRouter(url, "s3cret")
        admin.reply = (409, {"conflict": "generation", "detail": "moved", "expected_generation": 3,
                             "current_generation": 9})
        with pytest.raises(RouteConflict) as conflict:
            router.set_routes("1", "2", 5, expected_generation=3)
        assert (conflict.value.expected, conflict.value.current) == (3, 9)
        admin.reply = (409, {"refused": "artifact_integrity", "detail": "digest mismatch"})
        with pytest.raises(VersionRefused, match="digest mismatch"):
            router.set_routes("1", "2", 0)
        admin.reply = (409, b"not json")
        with pytest.raises(RouterError) as other:
            router.set_routes("1", "2", 0)
        assert type(other.value) is RouterError and "409" in str(other.value)
        admin.reply = (500, {"detail": "boom"})
        with pytest.raises(RouterError, match="answered 500"):
            router.get_routes()


@pytest.mark.parametrize("weight", [-1, 101, True])
def test_a_weight_outside_0_to_100_is_refused_before_any_call(weight: Any) -> None:
    with _admin_server() as (url, admin):
        with pytest.raises(ValueError, match="canary_weight"):
            LocalGatewayRouter(url, "t").set_routes("1", "2", weight)
        assert admin.seen == []


def test_the_httproute_weight_is_the_canary_share_of_both_backends() -> None:
    router = KubernetesHTTPRouteRouter(lambda *a: {}, namespace="mlcd")
    route = {"metadata": {"annotations": {"mlcd.io/stable-version": "1", "mlcd.io/canary-version": "2"},
                          "resourceVersion": "77"},
             "spec": {"rules": [{"backendRefs": [{"name": router.stable_service, "weight": 3},
                                                 {"name": router.canary_service, "weight": 1}]}]}}
    status = router._status(route)
    assert (status.stable, status.canary, status.canary_weight, status.generation) == ("1", "2", 25, "77")


def test_router_from_settings_prefers_the_callers_url_and_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLCD_ADMIN_TOKEN", "from-settings")
    monkeypatch.setenv("MLCD_GATEWAY_URL", "http://127.0.0.1:1")
    monkeypatch.delenv("MLCD_ROUTER_BACKEND", raising=False)
    router = router_from_settings("http://127.0.0.1:2", "from-caller")
    assert isinstance(router, LocalGatewayRouter)
    assert (router.url, router.token) == ("http://127.0.0.1:2", "from-caller")
    fallback = router_from_settings()
    assert isinstance(fallback, LocalGatewayRouter)
    assert (fallback.url, fallback.token) == ("http://127.0.0.1:1", "from-settings")
    monkeypatch.setenv("MLCD_ROUTER_BACKEND", "nginx")
    with pytest.raises(ValueError, match="MLCD_ROUTER_BACKEND"):
        router_from_settings()


def test_kubernetes_api_talks_to_the_server_its_kubeconfig_names(tmp_path: Path) -> None:
    pytest.importorskip("kubernetes")
    with _admin_server() as (url, admin):
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "c", "cluster": {"server": url.rstrip("/")}}],
            "users": [{"name": "u", "user": {"token": "kube-token"}}],
            "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u"}}],
        }))
        call = kubernetes_api(str(kubeconfig), "test")
        assert call("GET", "/admin/routes", None, None)["generation"] == 4
        assert admin.seen[-1][3] == "Bearer kube-token"
        patch = {"metadata": {"resourceVersion": "4"}, "spec": {"rules": []}}
        assert call("PATCH", "/apis/route", patch, "application/merge-patch+json")["generation"] == 4
        assert admin.seen[-2] == ("PATCH-TYPE", "/apis/route", "application/merge-patch+json", None)
        assert admin.seen[-1][2] == patch
        admin.reply = (409, {"kind": "Status", "reason": "Conflict"})
        with pytest.raises(RouteConflict, match="409"):
            call("PATCH", "/apis/route", patch, "application/merge-patch+json")
        admin.reply = (403, {"kind": "Status", "reason": "Forbidden"})
        with pytest.raises(RouterError, match="403") as forbidden:
            call("GET", "/apis/route", None, None)
        assert type(forbidden.value) is RouterError


# ------------------------------------------------------------------------------------------------ wiring
def test_rollout_from_settings_uses_the_given_registry_address_and_model(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlcd.rollout.canary import rollout_from_settings

    monkeypatch.setenv("MLCD_ADMIN_TOKEN", "t")
    monkeypatch.setenv("MLCD_MODEL_NAME", "from-settings")
    monkeypatch.delenv("MLCD_ROUTER_BACKEND", raising=False)
    ro = rollout_from_settings(RolloutSpec(), gateway_url="http://127.0.0.1:3",
                               tracking_uri="http://127.0.0.1:4", model_name="mnist-x")
    assert (ro.registry.tracking_uri, ro.registry.model_name) == ("http://127.0.0.1:4", "mnist-x")
    assert ro.metrics_url == "http://127.0.0.1:3" and ro.router.url == "http://127.0.0.1:3"
    assert rollout_from_settings(RolloutSpec(), tracking_uri="http://127.0.0.1:4").registry.model_name == "from-settings"


def test_a_backend_without_a_weight_counts_one_as_in_the_gateway_api() -> None:
    router = KubernetesHTTPRouteRouter(lambda *a: {}, namespace="mlcd")
    route = {"metadata": {"annotations": {"mlcd.io/stable-version": "1", "mlcd.io/canary-version": "2"}},
             "spec": {"rules": [{"backendRefs": [{"name": router.stable_service},
                                                 {"name": router.canary_service, "weight": 1}]}]}}
    assert router._status(route).canary_weight == 50
