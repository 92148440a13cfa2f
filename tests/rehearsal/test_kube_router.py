"""The HTTPRoute router through the official ``kubernetes`` client and a kubeconfig, against the serving stand-in.

The router's unit tests pass a recording callable; this drives :func:`mlcd.rollout.router.kubernetes_api` itself
(the binding a cluster uses), over HTTP with a bearer token, against a stand-in that answers a Deployment PATCH
at once and rolls the pods afterwards: weights move only to ready pods serving the pinned version, a version
whose pods never get ready fails the step closed, both compare-and-set refusals, and RBAC from rbac.yaml.

The pods here are small in-process HTTP servers that answer the gateway's V2 health endpoints (ready after a
delay, or never for a version named ``broken*``), so these tests need no MLflow and take seconds; the flow test
(test_flow.py) runs the same stand-in with real ``mlcd serve`` pods.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mlcd.rollout.router import (
    MERGE_PATCH,
    STRATEGIC_MERGE_PATCH,
    KubernetesHTTPRouteRouter,
    RolloutNotReady,
    RouteConflict,
    RouterError,
    VersionRefused,
    kubernetes_api,
)
from tests.rehearsal.kube import DEPLOYMENT_PREFIX, ROUTE_PATH, ServingCluster, api_server, kubeconfig, rollout_rules

STABLE, CANARY = "mlcd-gateway-stable", "mlcd-gateway-canary"
START_S = 1.5  # how long a fake pod takes to load its model


class FakePod:
    """A pod answering the gateway's V2 health endpoints: ready ``delay`` seconds after start, or never."""

    def __init__(self, version: str, port: int, delay: float) -> None:
        self.version = version
        self.ready_at = time.monotonic() + delay if not version.startswith("broken") else float("inf")
        pod = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                ready = time.monotonic() >= pod.ready_at
                served = re.fullmatch(r"/v2/models/([^/]+)/versions/([^/]+)/ready", self.path)
                if self.path == "/v2/health/ready":
                    status, body = (200, {"ready": True}) if ready else (503, {"error": "not ready: loading"})
                elif served and ready and served.group(2) == pod.version:
                    status, body = 200, {"name": served.group(1), "version": pod.version, "ready": True}
                else:
                    status, body = 404, {"error": f"model version is not being served (serving: {pod.version})"}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def ready(self) -> bool:
        return time.monotonic() >= self.ready_at

    def alive(self) -> bool:
        return True

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def fake_launcher(delay: float = START_S) -> Any:
    def launch(version: str, env: Mapping[str, str], port: int, root: Path) -> FakePod:
        assert env["MLCD_SERVE_VARIANT"] in ("stable", "canary", "holdback")
        return FakePod(version, port, delay)
    return launch


def _cluster(tmp_path: Path, **kwargs: Any) -> ServingCluster:
    kwargs.setdefault("launcher", fake_launcher())
    return ServingCluster(tmp_path / "serving", {}, lambda targets: None, **kwargs)


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Any]:
    """Builds (router, cluster) pairs on the official client; stops every server at the end."""
    stops: list[Any] = []

    def build(timeout: float = 20.0, token: str = "secret-token", **kwargs: Any) -> tuple[KubernetesHTTPRouteRouter,
                                                                                          ServingCluster]:
        cluster = _cluster(tmp_path, **kwargs)
        server = api_server(cluster, "secret-token").start()
        stops.extend([cluster.stop, server.stop])
        config = tmp_path / f"kubeconfig-{len(stops)}"
        config.write_text(kubeconfig(server.url, token))
        router = KubernetesHTTPRouteRouter(kubernetes_api(str(config)), rollout_timeout_s=timeout,
                                           poll_interval_s=0.2)
        return router, cluster

    try:
        yield build
    finally:
        for stop in reversed(stops):
            stop()


def test_routes_move_through_the_official_client(make: Any) -> None:
    rt, cluster = make()
    assert rt.set_routes("3", None, 0).stable == "3"  # bootstrap: the stable Deployment rolled out first
    before = rt.set_routes("3", "4", 0)
    assert (before.stable, before.canary, before.canary_weight) == ("3", "4", 0)
    moved = rt.set_routes("3", "4", 25, expected_generation=before.generation)
    assert moved.canary_weight == 25 and moved.generation != before.generation
    assert cluster.weights() == {STABLE: 75, CANARY: 25}
    assert cluster.rollouts == [(STABLE, "3"), (CANARY, "4")]  # same versions at 25 %: no Deployment touched
    with pytest.raises(RouteConflict):  # a stale generation, refused by the router before any call
        rt.set_routes("3", None, 0, expected_generation=before.generation)
    with pytest.raises(RouteConflict):  # a stale resourceVersion, refused by the API server (409)
        rt.api("PATCH", ROUTE_PATH, {"metadata": {"resourceVersion": str(before.generation)}}, MERGE_PATCH)
    assert cluster.weights() == {STABLE: 75, CANARY: 25}
    assert cluster.unready_weights == [] and cluster.refused == []


def test_a_deployment_patch_is_answered_before_its_pods_are_ready(make: Any) -> None:
    """What the API server does, and what today's stand-in hid: the PATCH returns, the pods come later."""
    rt, cluster = make()
    t0 = time.monotonic()
    answer = rt.api("PATCH", rt.deployment_path(CANARY), rt.deployment_patch("7"), STRATEGIC_MERGE_PATCH)
    assert time.monotonic() - t0 < START_S / 2
    assert answer["metadata"]["generation"] == 2
    assert answer["status"]["availableReplicas"] == 0 and cluster.url_of(CANARY) is None
    rt.wait_rollout(CANARY, "mlcd-gateway-canary", "7", generation=2)  # returns once the new pod is ready
    assert time.monotonic() - t0 >= START_S
    status = rt.api("GET", rt.deployment_path(CANARY), None, None)["status"]
    assert (status["observedGeneration"], status["updatedReplicas"], status["availableReplicas"]) == (2, 1, 1)
    # A PATCH that changes nothing leaves the generation (nothing to roll).
    again = rt.api("PATCH", rt.deployment_path(CANARY), rt.deployment_patch("7"), STRATEGIC_MERGE_PATCH)
    assert again["metadata"]["generation"] == 2


def test_weights_move_only_to_ready_pods_serving_the_version(make: Any) -> None:
    """Fails on a router that patches the route right after the Deployments (the pods are still loading)."""
    rt, cluster = make()
    rt.set_routes("1", None, 0)
    rt.set_routes("1", "2", 5)  # the canary Deployment pinned and given weight in one call
    assert cluster.served_version(CANARY) == "2" and cluster.weights()[CANARY] == 5
    rt.set_routes("2", None, 0)  # promotion: the stable Deployment rolls to 2 before the route says so
    assert cluster.served_version(STABLE) == "2" and cluster.weights() == {STABLE: 100, CANARY: 0}
    assert cluster.unready_weights == [], cluster.unready_weights


def test_a_version_whose_pods_never_get_ready_fails_closed(make: Any) -> None:
    rt, cluster = make(timeout=3.0)
    rt.set_routes("1", "2", 0)
    rt.set_routes("1", "2", 25)
    before = rt.get_routes()
    t0 = time.monotonic()
    with pytest.raises(RolloutNotReady) as info:
        rt.set_routes("1", "broken-3", 25)
    assert 3.0 <= time.monotonic() - t0 < 10
    assert isinstance(info.value, VersionRefused)  # a canary that cannot be served: rolled back by the rollout
    assert info.value.deployment == CANARY and info.value.version == "broken-3"
    assert "not ready after 3s" in str(info.value) and "HTTPRoute was not changed" in str(info.value)
    after = rt.get_routes()
    assert after == before and after.generation == before.generation  # weight and versions unchanged
    assert cluster.served_version(CANARY) == "2"  # maxUnavailable 0: the old pod still serves
    assert cluster.unready_weights == []


def test_a_stalled_rollout_fails_at_its_progress_deadline(make: Any) -> None:
    rt, cluster = make(timeout=60.0, progress_deadline_s=1.0, launcher=fake_launcher(0.2))
    rt.set_routes("1", None, 0)
    t0 = time.monotonic()
    with pytest.raises(RolloutNotReady, match="ProgressDeadlineExceeded|timed out progressing"):
        rt.set_routes("1", "broken-2", 0)
    assert time.monotonic() - t0 < 15  # the Deployment's own deadline, long before the router's 60 s
    assert rt.get_routes().canary is None


def test_a_deployment_repinned_meanwhile_fails_at_once(make: Any) -> None:
    rt, cluster = make(timeout=30.0)
    rt.set_routes("1", None, 0)
    rt.api("PATCH", rt.deployment_path(CANARY), rt.deployment_patch("5"), STRATEGIC_MERGE_PATCH)
    rt.api("PATCH", rt.deployment_path(CANARY), rt.deployment_patch("6"), STRATEGIC_MERGE_PATCH)  # someone else
    with pytest.raises(RolloutNotReady, match="pinned to version 6"):
        rt.wait_rollout(CANARY, "mlcd-gateway-canary", "5")


def test_the_stand_in_is_as_strict_as_the_api_server(make: Any) -> None:
    rt, cluster = make()
    # A merge patch replaces the container list whole: the gateway container loses its image (422).
    with pytest.raises(RouterError, match="422"):
        rt.api("PATCH", rt.deployment_path(CANARY), rt.deployment_patch("2"), MERGE_PATCH)
    with pytest.raises(RouterError, match="415"):  # a CRD takes no strategic merge patch
        rt.api("PATCH", ROUTE_PATH, {"metadata": {}}, STRATEGIC_MERGE_PATCH)
    with pytest.raises(RouterError, match="403"):  # RBAC: no Deployment but the two gateways
        rt.api("GET", f"{DEPLOYMENT_PREFIX}other", None, None)
    with pytest.raises(RouterError, match="503"):  # the proxy to a Service without a ready endpoint
        rt.api("GET", rt.service_proxy_path("mlcd-gateway-canary", "/v2/health/ready"), None, None)


def test_the_router_needs_exactly_the_rollout_role(make: Any, tmp_path: Path) -> None:
    """Without `get` on Deployments (the Role before the router waited) the wait is refused, not skipped."""
    rules = copy.deepcopy(rollout_rules())
    for rule in rules:
        if rule["resources"] == ["deployments"]:
            rule["verbs"] = ["patch"]
    rt, cluster = make(rules=rules)
    with pytest.raises(RouterError, match="403"):
        rt.set_routes("1", None, 0)
    assert rt.get_routes().stable is None and any("deployments" in r for r in cluster.refused)


def test_a_wrong_token_is_refused(make: Any) -> None:
    rt, _ = make(token="wrong")
    with pytest.raises(RouterError, match="401"):
        rt.get_routes()
