"""The Kubernetes router's exact patch bodies, and the serving manifests against the official schemas offline.

The Kubernetes API cannot run here; the router takes an API callable, and this test's callable records each
call and answers from a tiny object store that applies RFC 7386 merge patches, so ``get_routes`` reads back
what ``set_routes`` wrote. HTTPRoute is a CRD that kubernetes-validate does not know: it is checked against
the basics of the gateway.networking.k8s.io/v1 schema vendored below (from the Gateway API CRD, v1.2).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from mlcd.rollout.router import (
    FEEDBACK_MATCHES,
    MERGE_PATCH,
    PUBLIC_MATCHES,
    STRATEGIC_MERGE_PATCH,
    KubernetesHTTPRouteRouter,
    LocalGatewayRouter,
    RolloutNotReady,
    RouteConflict,
    Router,
    RouterError,
    RouteStatus,
    rollout_check,
)
from tests.kubefake import RolledOut

pytestmark = pytest.mark.unit

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
ROUTE_PATH = "/apis/gateway.networking.k8s.io/v1/namespaces/mlcd/httproutes/mlcd-gateway"
STABLE_DEPLOY = "/apis/apps/v1/namespaces/mlcd/deployments/mlcd-gateway-stable"
CANARY_DEPLOY = "/apis/apps/v1/namespaces/mlcd/deployments/mlcd-gateway-canary"

_NAME = {"type": "string", "minLength": 1, "maxLength": 253}
_BACKEND_REF = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "group": {"type": "string", "maxLength": 253},
        "kind": {"type": "string", "minLength": 1, "maxLength": 63},
        "name": _NAME,
        "namespace": {"type": "string", "maxLength": 63},
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "weight": {"type": "integer", "minimum": 0, "maximum": 1000000},
        "filters": {"type": "array"},
    },
    "additionalProperties": False,
}
HTTPROUTE_V1_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "gateway.networking.k8s.io/v1"},
        "kind": {"const": "HTTPRoute"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": _NAME,
                "namespace": {"type": "string", "maxLength": 63},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": ["string", "null"]}},
            },
        },
        "spec": {
            "type": "object",
            "properties": {
                "parentRefs": {
                    "type": "array",
                    "maxItems": 32,
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "group": {"type": "string"},
                            "kind": {"type": "string"},
                            "name": _NAME,
                            "namespace": {"type": "string"},
                            "sectionName": {"type": "string"},
                            "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                        },
                        "additionalProperties": False,
                    },
                },
                "hostnames": {"type": "array", "maxItems": 16, "items": {"type": "string", "minLength": 1}},
                "rules": {
                    "type": "array",
                    "maxItems": 16,
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "matches": {"type": "array", "maxItems": 64},
                            "filters": {"type": "array", "maxItems": 16},
                            "backendRefs": {"type": "array", "maxItems": 16, "items": _BACKEND_REF},
                            "timeouts": {"type": "object"},
                        },
                        "additionalProperties": False,
                    },
                },
            },
            "additionalProperties": False,
        },
    },
}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (what the API server does with application/merge-patch+json)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class RecordingApi:
    """Records every call; keeps the HTTPRoute so reads reflect writes.

    Like the API server, it gives the route a ``metadata.resourceVersion`` that changes with every write, and
    answers a patch carrying a different resourceVersion with 409 Conflict (raised as the real callable does).
    ``after_get`` runs once after the next GET of the route: another writer acting between read and patch.
    """

    def __init__(self, route: dict[str, Any]):
        self.route = route
        self.route.setdefault("metadata", {})["resourceVersion"] = "100"
        self.calls: list[tuple[str, str, Any, str | None]] = []
        self.after_get: Any = None
        self.cluster = RolledOut()  # Deployments whose rollouts finish at once (the waiting: tests/rehearsal)

    def __call__(self, method: str, path: str, body: Any, content_type: str | None) -> dict[str, Any]:
        self.calls.append((method, path, copy.deepcopy(body), content_type))
        if path == ROUTE_PATH:
            if method == "PATCH":
                assert content_type == MERGE_PATCH
                self.write(body)
            answer = copy.deepcopy(self.route)
            if method == "GET" and self.after_get is not None:
                hook, self.after_get = self.after_get, None
                hook(self)
            return answer
        return self.cluster(method, path, body)

    def write(self, body: dict[str, Any]) -> None:
        current = self.route["metadata"]["resourceVersion"]
        sent = (body.get("metadata") or {}).get("resourceVersion")
        if sent is not None and sent != current:
            raise RouteConflict(f"kubernetes PATCH {ROUTE_PATH}: 409 Conflict")
        self.route = merge_patch(self.route, body)
        self.route["metadata"]["resourceVersion"] = str(int(current) + 1)

    def patches(self) -> list[tuple[str, Any, str | None]]:
        return [(path, body, ct) for method, path, body, ct in self.calls if method == "PATCH"]


def load_route() -> dict[str, Any]:
    return yaml.safe_load((K8S / "httproute.yaml").read_text())


def route_patch(
    stable_weight: int, canary_weight: int, stable: str, canary: str | None, rv: str
) -> dict[str, Any]:
    return {
        "metadata": {
            "annotations": {"mlcd.io/stable-version": stable, "mlcd.io/canary-version": canary,
                            "mlcd.io/holdback-version": None},  # null: no holdback (removed by the merge patch)
            "resourceVersion": rv,
        },
        "spec": {"rules": [{"matches": [dict(m) for m in PUBLIC_MATCHES], "backendRefs": [
            {"name": "mlcd-gateway-stable", "port": 8000, "weight": stable_weight},
            {"name": "mlcd-gateway-canary", "port": 8000, "weight": canary_weight},
        ]}, {"matches": [dict(m) for m in FEEDBACK_MATCHES], "backendRefs": [
            {"name": "mlcd-gateway-stable", "port": 8000, "weight": 1},
            {"name": "mlcd-gateway-canary", "port": 8000, "weight": 0 if canary is None else 1},
        ]}]},
    }


def deploy_patch(version: str) -> dict[str, Any]:
    return {"spec": {"template": {
        "metadata": {"annotations": {"mlcd.io/model-version": version}},
        "spec": {"containers": [{"name": "gateway", "env": [{"name": "MLCD_SERVE_VERSION", "value": version}]}]},
    }}}


def test_a_rollout_sends_exactly_these_patches() -> None:
    api = RecordingApi(load_route())
    router = KubernetesHTTPRouteRouter(api)
    assert isinstance(router, Router)
    assert router.get_routes() == RouteStatus("1", None, 0)

    assert router.set_routes("1", "2", 5) == RouteStatus("1", "2", 5)
    assert api.patches() == [
        (CANARY_DEPLOY, deploy_patch("2"), STRATEGIC_MERGE_PATCH),
        (ROUTE_PATH, route_patch(95, 5, "1", "2", "100"), MERGE_PATCH),
    ]
    api.calls.clear()

    router.set_routes("1", "2", 25)  # same versions: only the weights move
    assert api.patches() == [(ROUTE_PATH, route_patch(75, 25, "1", "2", "101"), MERGE_PATCH)]
    api.calls.clear()

    assert router.set_routes("2", None, 0) == RouteStatus("2", None, 0)  # promotion
    assert api.patches() == [
        (STABLE_DEPLOY, deploy_patch("2"), STRATEGIC_MERGE_PATCH),
        (ROUTE_PATH, route_patch(100, 0, "2", None, "102"), MERGE_PATCH),
    ]
    # The merge patch removed the canary annotation (null) and kept the rest of the route.
    assert "mlcd.io/canary-version" not in api.route["metadata"]["annotations"]
    assert api.route["spec"]["parentRefs"] == load_route()["spec"]["parentRefs"]
    assert router.get_routes().generation == "103"
    jsonschema.validate(api.route, HTTPROUTE_V1_SCHEMA)


def test_a_stale_step_cannot_undo_a_rollback() -> None:
    """A canary step read generation G, a rollback moved the route, the step's set with G is refused."""
    api = RecordingApi(load_route())
    router = KubernetesHTTPRouteRouter(api)
    router.set_routes("1", "2", 25)
    seen = router.get_routes()  # the canary step reads the routes...
    router.set_routes("1", None, 0)  # ...a rollback lands in between...
    api.calls.clear()
    with pytest.raises(RouteConflict) as info:  # ...and the step's next weight is refused before any patch
        router.set_routes("1", "2", 50, expected_generation=seen.generation)
    assert info.value.expected == seen.generation and info.value.current == router.get_routes().generation
    assert api.patches() == []
    assert router.get_routes() == RouteStatus("1", None, 0)  # traffic stays where the rollback put it
    # With the current generation the same move is allowed.
    current = router.get_routes().generation
    assert router.set_routes("1", "2", 50, expected_generation=current) == RouteStatus("1", "2", 50)


def test_a_change_between_read_and_patch_is_a_409_conflict() -> None:
    api = RecordingApi(load_route())
    router = KubernetesHTTPRouteRouter(api)
    router.set_routes("1", "2", 25)

    def rollback_meanwhile(store: RecordingApi) -> None:
        store.write({"metadata": {"annotations": {"mlcd.io/canary-version": None}},
                     "spec": {"rules": [{"backendRefs": [
                         {"name": "mlcd-gateway-stable", "port": 8000, "weight": 100},
                         {"name": "mlcd-gateway-canary", "port": 8000, "weight": 0}]}]}})

    api.after_get = rollback_meanwhile
    with pytest.raises(RouteConflict, match="409"):
        router.set_routes("1", "2", 50)  # no expected generation: the router still fences its own read
    assert router.get_routes() == RouteStatus("1", None, 0)


def test_route_status_equality_ignores_the_generation() -> None:
    assert RouteStatus("1", "2", 5, generation=3) == RouteStatus("1", "2", 5)
    assert isinstance(RouteConflict("x"), RouterError)  # callers catching RouterError still catch it


def test_bad_weights_are_refused_before_any_call() -> None:
    api = RecordingApi(load_route())
    router = KubernetesHTTPRouteRouter(api)
    for weight in (-1, 101):
        with pytest.raises(ValueError, match="canary_weight"):
            router.set_routes("1", "2", weight)
    assert api.patches() == []
    # No canary means the canary weight is 0, whatever was asked.
    assert router.route_patch("1", None, 40)["spec"]["rules"][0]["backendRefs"][1]["weight"] == 0


def test_httproute_manifest_matches_the_v1_schema_and_the_router() -> None:
    route = load_route()
    jsonschema.validate(route, HTTPROUTE_V1_SCHEMA)
    refs = route["spec"]["rules"][0]["backendRefs"]
    assert [r["name"] for r in refs] == ["mlcd-gateway-stable", "mlcd-gateway-canary"]
    assert [r["weight"] for r in refs] == [100, 0]
    broken = copy.deepcopy(route)
    broken["spec"]["rules"][0]["backendRefs"][0]["weight"] = -5
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, HTTPROUTE_V1_SCHEMA)


@pytest.mark.parametrize("name", sorted(p.name for p in K8S.glob("gateway-*.yaml")))
def test_gateway_manifests_validate_against_the_kubernetes_schema(name: str) -> None:
    for doc in yaml.safe_load_all((K8S / name).read_text()):
        kubernetes_validate.validate(doc, "1.32", strict=True)


def test_deployments_and_services_line_up_with_the_route() -> None:
    services = {yaml.safe_load((K8S / f"gateway-service-{v}.yaml").read_text())["metadata"]["name"]: v
                for v in ("stable", "canary")}
    assert set(services) == {r["name"] for r in load_route()["spec"]["rules"][0]["backendRefs"]}
    for variant in ("stable", "canary"):
        dep = yaml.safe_load((K8S / f"gateway-deployment-{variant}.yaml").read_text())
        svc = yaml.safe_load((K8S / f"gateway-service-{variant}.yaml").read_text())
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
        container = dep["spec"]["template"]["spec"]["containers"][0]
        assert container["name"] == "gateway"  # the router's strategic merge patch merges by this name
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["MLCD_SERVE_VARIANT"] == variant and "MLCD_SERVE_VERSION" in env


def test_local_router_needs_a_token_and_reports_an_unreachable_gateway() -> None:
    with pytest.raises(RouterError, match="admin token"):
        LocalGatewayRouter("http://127.0.0.1:9", None)
    from mlcd.mlflow_server import free_port

    router = LocalGatewayRouter(f"http://127.0.0.1:{free_port()}", "t", timeout=2)
    with pytest.raises(RouterError, match="unreachable"):
        router.get_routes()


def _deployment(version: str, generation: int = 2, observed: int = 2, replicas: int = 2, updated: int = 2,
                total: int = 2, available: int = 2, conditions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"metadata": {"generation": generation},
            "spec": {"replicas": replicas, "template": {"metadata": {"annotations": {"mlcd.io/model-version": version}}}},
            "status": {"observedGeneration": observed, "replicas": total, "updatedReplicas": updated,
                       "availableReplicas": available, "conditions": conditions or []}}


@pytest.mark.parametrize(("deployment", "done", "failed", "why"), [
    (_deployment("2"), True, False, "2 of 2 replicas available"),
    (_deployment("2", observed=1), False, False, "generation 2 not yet observed"),
    (_deployment("2", updated=1, total=2, available=2), False, False, "1 of 2 replicas updated"),
    (_deployment("2", total=3), False, False, "1 old replicas still running"),
    (_deployment("2", available=1), False, False, "1 of 2 updated replicas available"),
    (_deployment("3"), False, True, "pinned to version 3"),
    (_deployment("2", available=1, conditions=[{"type": "Progressing", "status": "False",
                                                 "reason": "ProgressDeadlineExceeded", "message": "timed out"}]),
     False, True, "rollout stalled: timed out"),
])
def test_a_rollout_is_done_only_when_every_replica_is_updated_and_available(
        deployment: dict[str, Any], done: bool, failed: bool, why: str) -> None:
    check = rollout_check(deployment, "2")
    assert (check.done, check.failed) == (done, failed) and why in check.reason, check


def test_the_generation_the_patch_answered_is_the_one_waited_for() -> None:
    # The controller has observed 2, but the PATCH answered generation 3: the old status says nothing yet.
    assert not rollout_check(_deployment("2", generation=3, observed=2), "2", generation=3).done
    assert rollout_check(_deployment("2", generation=3, observed=3), "2", generation=3).done


def test_waiting_times_out_on_the_routers_clock_and_leaves_the_route() -> None:
    api = RecordingApi(load_route())
    now = [0.0]
    router = KubernetesHTTPRouteRouter(api, rollout_timeout_s=30, poll_interval_s=5,
                                       sleep=lambda s: now.__setitem__(0, now[0] + s), clock=lambda: now[0])
    api.cluster.deployment = lambda name: _deployment(api.cluster.pinned.get(name, "?"), available=0)  # type: ignore[method-assign]
    with pytest.raises(RolloutNotReady, match="not ready after 30s: 0 of 2 updated replicas available"):
        router.set_routes("1", "2", 0)
    assert now[0] == 30 and [p[0] for p in api.patches()] == [CANARY_DEPLOY]  # the route was never patched
    assert router.get_routes() == RouteStatus("1", None, 0)


HOLDBACK_DEPLOY = "/apis/apps/v1/namespaces/mlcd/deployments/mlcd-gateway-holdback"


def test_a_promotion_with_a_holdback_keeps_the_previous_champion_as_a_third_weighted_backend() -> None:
    api = RecordingApi(load_route())
    router = KubernetesHTTPRouteRouter(api)
    router.set_routes("1", "2", 95)
    api.calls.clear()
    status = router.set_routes("2", None, 0, holdback="1", holdback_weight=5)
    assert status == RouteStatus("2", None, 0, holdback="1", holdback_weight=5)
    patches = api.patches()
    assert [p[0] for p in patches] == [STABLE_DEPLOY, HOLDBACK_DEPLOY, ROUTE_PATH]
    assert patches[1][1] == deploy_patch("1")
    body = patches[2][1]
    assert body["metadata"]["annotations"]["mlcd.io/holdback-version"] == "1"
    assert body["spec"]["rules"][0]["backendRefs"] == [
        {"name": "mlcd-gateway-stable", "port": 8000, "weight": 95},
        {"name": "mlcd-gateway-canary", "port": 8000, "weight": 0},
        {"name": "mlcd-gateway-holdback", "port": 8000, "weight": 5},
    ]
    jsonschema.validate(api.route, HTTPROUTE_V1_SCHEMA)
    # The bake ends: the holdback's weight goes to 0 and its backend and annotation leave the route.
    released = router.set_routes("2", None, 0)
    assert released == RouteStatus("2", None, 0) and released.holdback is None
    assert "mlcd.io/holdback-version" not in api.route["metadata"]["annotations"]
    assert [ref["name"] for ref in api.route["spec"]["rules"][0]["backendRefs"]] == [
        "mlcd-gateway-stable", "mlcd-gateway-canary"]


@pytest.mark.parametrize(("canary", "weight", "held", "why"), [
    ("3", 96, 5, "exceed 100"), (None, 0, 101, "holdback_weight"), (None, 0, -1, "holdback_weight")])
def test_a_holdback_that_is_not_a_split_of_the_traffic_is_refused_before_anything_is_sent(
        canary: str | None, weight: int, held: int, why: str) -> None:
    api = RecordingApi(load_route())
    router = KubernetesHTTPRouteRouter(api)
    with pytest.raises(ValueError, match=why):
        router.set_routes("2", canary, weight, holdback="1", holdback_weight=held)
    assert api.patches() == []
