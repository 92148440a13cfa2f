"""The HTTPRoute router through the official ``kubernetes`` client and a kubeconfig, against the serving stand-in.

The router's unit tests pass a recording callable; this drives :func:`mlcd.rollout.router.kubernetes_api` itself
(the binding a cluster uses), over HTTP with a bearer token: reads, moves, and both compare-and-set refusals.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mlcd.rollout.router import MERGE_PATCH, KubernetesHTTPRouteRouter, RouteConflict, RouterError, kubernetes_api
from tests.rehearsal.kube import ROUTE_PATH, ServingCluster, api_server, kubeconfig


@pytest.fixture
def router(tmp_path: Path) -> Iterator[tuple[KubernetesHTTPRouteRouter, ServingCluster]]:
    cluster = ServingCluster(tmp_path / "serving", {}, lambda targets: None)
    server = api_server(cluster, "secret-token").start()
    (tmp_path / "kubeconfig").write_text(kubeconfig(server.url, "secret-token"))
    try:
        yield KubernetesHTTPRouteRouter(kubernetes_api(str(tmp_path / "kubeconfig"))), cluster
    finally:
        server.stop()
        cluster.stop()


def test_routes_move_through_the_official_client(router: tuple[KubernetesHTTPRouteRouter, ServingCluster]) -> None:
    rt, cluster = router
    cluster.route["metadata"]["annotations"] = {"mlcd.io/stable-version": "3", "mlcd.io/canary-version": "4"}
    before = rt.get_routes()
    assert (before.stable, before.canary, before.canary_weight) == ("3", "4", 0)
    moved = rt.set_routes("3", "4", 25, expected_generation=before.generation)
    assert moved.canary_weight == 25 and moved.generation != before.generation
    assert cluster.weights() == {"mlcd-gateway-stable": 75, "mlcd-gateway-canary": 25}
    assert cluster.rollouts == []  # same versions: no Deployment was touched
    with pytest.raises(RouteConflict):  # a stale generation, refused by the router before any call
        rt.set_routes("3", None, 0, expected_generation=before.generation)
    with pytest.raises(RouteConflict):  # a stale resourceVersion, refused by the API server (409)
        rt.api("PATCH", ROUTE_PATH, {"metadata": {"resourceVersion": str(before.generation)}}, MERGE_PATCH)
    assert cluster.weights() == {"mlcd-gateway-stable": 75, "mlcd-gateway-canary": 25}


def test_a_wrong_token_is_refused(tmp_path: Path) -> None:
    cluster = ServingCluster(tmp_path / "serving", {}, lambda targets: None)
    server = api_server(cluster, "right").start()
    try:
        (tmp_path / "kubeconfig").write_text(kubeconfig(server.url, "wrong"))
        with pytest.raises(RouterError, match="401"):
            KubernetesHTTPRouteRouter(kubernetes_api(str(tmp_path / "kubeconfig"))).get_routes()
    finally:
        server.stop()
