"""Where traffic weights are applied: the local gateway's admin API, or a Gateway API ``HTTPRoute``.

Both implement :class:`Router`; the canary logic never knows which one it drives (Flagger's mesh providers).

**No resurrection.** Routes carry a generation: the gateway's counter (it grows with every route change and
survives restarts) or the HTTPRoute's ``metadata.resourceVersion``. Every move can be compare-and-set: pass the
``generation`` read with the routes as ``expected_generation`` and the move applies only if nobody moved the routes
since; otherwise :class:`RouteConflict` is raised and nothing changes. A canary step reads the routes, decides,
and sets with the generation it read, so a rollback that lands in between is never undone by the next weight::

    routes = router.get_routes()                  # read once, at the start of the step
    ...                                            # judge the window, pick the next weight
    try:
        router.set_routes(stable, canary, weight, expected_generation=routes.generation)
    except RouteConflict:                          # a rollback (or a person) moved traffic meanwhile:
        ...                                        # stop the step; leave traffic where the rollback put it

Without ``expected_generation`` the local router sets unconditionally (as before) and the HTTPRoute router still
guards its own read-then-patch with the resourceVersion it read.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

# The gateway's route generation (an int) or an HTTPRoute's resourceVersion (an opaque string).
Generation = int | str


@dataclass(frozen=True)
class RouteStatus:
    """What a router serves now, and the generation of that state (for compare-and-set).

    ``generation`` is left out of equality: two statuses serving the same versions and weight are equal.
    """

    stable: str | None
    canary: str | None
    canary_weight: int
    generation: Generation | None = field(default=None, compare=False)
    # The previous champion kept on a small share after a promotion: the bake's concurrent control (percent of all
    # traffic, like ``canary_weight``; stable gets ``100 - canary_weight - holdback_weight``).
    holdback: str | None = None
    holdback_weight: int = 0


@runtime_checkable
class Router(Protocol):
    def set_routes(
        self, stable: str, canary: str | None, canary_weight: int, expected_generation: Generation | None = None,
        *, holdback: str | None = None, holdback_weight: int = 0,
    ) -> RouteStatus:
        """Serve ``stable`` and, at ``canary_weight`` percent, ``canary`` (``None``: stable only).

        With ``expected_generation``, only if the routes are still at that generation (:class:`RouteConflict`).
        ``holdback`` at ``holdback_weight`` percent is the previous champion kept as the bake's control; a call
        without it releases any holdback (every rollback and manual move serves without one).
        """
        ...

    def get_routes(self) -> RouteStatus:
        """The versions and canary weight served now, with their generation."""
        ...


class RouterError(RuntimeError):
    """The backend refused or could not be reached; the message says which and why."""


class RouteConflict(RouterError):
    """The routes moved since the caller read them (another writer won): nothing was changed.

    The caller lost the race: it must stop, not retry blindly (the winner is usually a rollback).
    """

    def __init__(self, message: str, expected: Generation | None = None, current: Generation | None = None):
        super().__init__(message)
        self.expected = expected
        self.current = current


class VersionRefused(RouterError):
    """The backend will never serve this version (its artifact failed the integrity check): a failed canary."""


def _check_weight(canary: str | None, canary_weight: int) -> int:
    if isinstance(canary_weight, bool) or not 0 <= int(canary_weight) <= 100:
        raise ValueError(f"canary_weight must be in 0..100, got {canary_weight!r}")
    return int(canary_weight) if canary is not None else 0


def check_holdback(stable: str, canary_weight: int, holdback: str | None, holdback_weight: int) -> int:
    """The holdback's weight in percent (0 without a holdback version); refuses a split that is not one."""
    if isinstance(holdback_weight, bool) or not 0 <= int(holdback_weight) <= 100:
        raise ValueError(f"holdback_weight must be in 0..100, got {holdback_weight!r}")
    if holdback is None or str(holdback) == str(stable):
        return 0
    if canary_weight + int(holdback_weight) > 100:
        raise ValueError(f"canary_weight {canary_weight} + holdback_weight {holdback_weight} exceed 100")
    return int(holdback_weight)


class LocalGatewayRouter:
    """Drives ``mlcd serve`` through ``/admin/routes`` with the bearer token.

    Args:
        url: the gateway's base URL.
        token: ``MLCD_ADMIN_TOKEN``.
        timeout: seconds per call; setting a new version waits for the gateway to load it.
    """

    def __init__(self, url: str, token: str | None, timeout: float = 120.0):
        if not token:
            raise RouterError("the local gateway router needs the admin token (MLCD_ADMIN_TOKEN)")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 - configured URL
                return dict(json.loads(resp.read()))
        except urllib.error.HTTPError as exc:
            raw = exc.read().decode(errors="replace")
            if exc.code == 409:
                try:
                    answer = json.loads(raw)
                except ValueError:
                    answer = {}
                if isinstance(answer, dict) and answer.get("refused") == "artifact_integrity":
                    raise VersionRefused(
                        f"gateway {method} {path} answered 409, version refused: {answer.get('detail')}"
                    ) from None
                if isinstance(answer, dict) and answer.get("conflict") == "generation":
                    raise RouteConflict(
                        f"gateway routes moved: {answer.get('detail')}",
                        expected=answer.get("expected_generation"),
                        current=answer.get("current_generation"),
                    ) from None
            raise RouterError(f"gateway {method} {path} answered {exc.code}: {raw[:300]}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise RouterError(f"gateway {self.url} unreachable: {exc}") from None

    @staticmethod
    def _status(body: dict[str, Any]) -> RouteStatus:
        gen = body.get("generation")
        held = body.get("holdback")
        return RouteStatus(
            body.get("stable"), body.get("canary"), int(body.get("canary_weight", 0)),
            None if gen is None else int(gen), None if held is None else str(held),
            int(body.get("holdback_weight", 0)) if held is not None else 0,
        )

    def set_routes(
        self, stable: str, canary: str | None, canary_weight: int, expected_generation: Generation | None = None,
        *, holdback: str | None = None, holdback_weight: int = 0,
    ) -> RouteStatus:
        weight = _check_weight(canary, canary_weight)
        held = check_holdback(stable, weight, holdback, holdback_weight)
        body: dict[str, Any] = {
            "stable": str(stable), "canary": None if canary is None else str(canary), "canary_weight": weight,
        }
        if held:  # only sent when used: a gateway without holdback support still takes every other move
            body.update({"holdback": str(holdback), "holdback_weight": held})
        if expected_generation is not None:
            body["expected_generation"] = int(expected_generation)  # the gateway compares and sets under its lock
        return self._status(self._call("POST", "/admin/routes", body))

    def get_routes(self) -> RouteStatus:
        return self._status(self._call("GET", "/admin/routes"))


# (method, path, body, content_type) → the decoded JSON answer of the Kubernetes API server
KubeApi = Callable[[str, str, Any, "str | None"], dict[str, Any]]

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
# The only paths the public HTTPRoute sends to the gateways: /predict and the Open Inference Protocol (/v2: health,
# metadata, infer). /admin, /metrics, /feedback and /healthz stay on the internal Services (deploy/k8s/README.md).
PUBLIC_MATCHES: tuple[dict[str, Any], ...] = (
    {"path": {"type": "Exact", "value": "/predict"}, "method": "POST"},
    {"path": {"type": "PathPrefix", "value": "/v2"}},
)
VERSION_ANNOTATION = "mlcd.io/model-version"
STABLE_ANNOTATION = "mlcd.io/stable-version"
CANARY_ANNOTATION = "mlcd.io/canary-version"
HOLDBACK_ANNOTATION = "mlcd.io/holdback-version"


class KubernetesHTTPRouteRouter:
    """Weights on a Gateway API ``HTTPRoute`` with two backendRefs (stable and canary Services).

    Each variant is a Deployment of the gateway image pinned to one version (``MLCD_SERVE_VERSION``). A new
    version is rolled into its Deployment with a strategic merge patch (built-in kind); the HTTPRoute is a
    CRD, which takes no strategic merge patch, so its weights go in a JSON merge patch. A merge patch replaces
    lists whole, so the patch carries the complete rule mlcd owns (the one in ``deploy/k8s/httproute.yaml``).

    Args:
        api: performs one call against the API server; tests pass a recording callable.
        namespace, route_name: the HTTPRoute.
        stable_service, canary_service: the two backend Services; ``port`` their port.
        stable_deployment, canary_deployment: the Deployments that serve them; ``container`` their gateway.
    """

    def __init__(
        self,
        api: KubeApi,
        namespace: str = "mlcd",
        route_name: str = "mlcd-gateway",
        stable_service: str = "mlcd-gateway-stable",
        canary_service: str = "mlcd-gateway-canary",
        port: int = 8000,
        stable_deployment: str = "mlcd-gateway-stable",
        canary_deployment: str = "mlcd-gateway-canary",
        container: str = "gateway",
        holdback_service: str = "mlcd-gateway-holdback",
        holdback_deployment: str = "mlcd-gateway-holdback",
    ):
        self.api = api
        self.namespace = namespace
        self.route_name = route_name
        self.stable_service = stable_service
        self.canary_service = canary_service
        self.port = port
        self.stable_deployment = stable_deployment
        self.canary_deployment = canary_deployment
        self.container = container
        self.holdback_service = holdback_service
        self.holdback_deployment = holdback_deployment

    @property
    def route_path(self) -> str:
        return f"/apis/gateway.networking.k8s.io/v1/namespaces/{self.namespace}/httproutes/{self.route_name}"

    def deployment_path(self, name: str) -> str:
        return f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{name}"

    def route_patch(
        self, stable: str, canary: str | None, canary_weight: int, resource_version: str | None = None,
        holdback: str | None = None, holdback_weight: int = 0,
    ) -> dict[str, Any]:
        """The JSON merge patch that sets the weights (and records the versions as annotations).

        With ``resource_version`` the API server applies it only if the route is still at that version (409
        Conflict otherwise): the compare-and-set that keeps a stale canary step from undoing a rollback.
        A holdback (the previous champion's Deployment) is a third weighted backend, present only while it has
        weight: a route that names a Service nobody created would not resolve.
        """
        weight = _check_weight(canary, canary_weight)
        held = check_holdback(stable, weight, holdback, holdback_weight)
        metadata: dict[str, Any] = {"annotations": {
            STABLE_ANNOTATION: str(stable), CANARY_ANNOTATION: canary,
            HOLDBACK_ANNOTATION: str(holdback) if held else None,  # null removes it in a merge patch
        }}
        if resource_version is not None:
            metadata["resourceVersion"] = str(resource_version)
        return {
            "metadata": metadata,
            "spec": {
                "rules": [
                    {
                        # A merge patch replaces the rules whole: the matches travel with every patch, or the
                        # first weight change would open every path (admin, metrics) to the public listener.
                        "matches": [dict(m) for m in PUBLIC_MATCHES],
                        "backendRefs": [
                            {"name": self.stable_service, "port": self.port, "weight": 100 - weight - held},
                            {"name": self.canary_service, "port": self.port, "weight": weight},
                            *([{"name": self.holdback_service, "port": self.port, "weight": held}] if held else []),
                        ]
                    }
                ]
            },
        }

    def deployment_patch(self, version: str) -> dict[str, Any]:
        """The strategic merge patch that pins a Deployment to ``version`` (containers and env merge by name)."""
        return {
            "spec": {
                "template": {
                    "metadata": {"annotations": {VERSION_ANNOTATION: str(version)}},
                    "spec": {
                        "containers": [
                            {"name": self.container, "env": [{"name": "MLCD_SERVE_VERSION", "value": str(version)}]}
                        ]
                    },
                }
            }
        }

    def set_routes(
        self, stable: str, canary: str | None, canary_weight: int, expected_generation: Generation | None = None,
        *, holdback: str | None = None, holdback_weight: int = 0,
    ) -> RouteStatus:
        """Pin changed versions into their Deployments, then move the weights on the HTTPRoute.

        Compare-and-set on the route's ``resourceVersion``: ``expected_generation`` if given (checked before any
        Deployment is touched), else the one just read; a concurrent change makes the API server answer 409,
        raised as :class:`RouteConflict`.
        """
        self.route_patch(stable, canary, canary_weight, None, holdback, holdback_weight)  # validates first
        current = self.get_routes()
        if expected_generation is not None and str(expected_generation) != str(current.generation):
            raise RouteConflict(
                f"HTTPRoute {self.namespace}/{self.route_name} is at resourceVersion {current.generation}, "
                f"expected {expected_generation}: another writer moved the routes; nothing changed",
                expected=expected_generation, current=current.generation,
            )
        fence = None if current.generation is None else str(current.generation)
        patch = self.route_patch(stable, canary, canary_weight, fence, holdback, holdback_weight)
        if current.stable != str(stable):
            self.api("PATCH", self.deployment_path(self.stable_deployment), self.deployment_patch(stable),
                     STRATEGIC_MERGE_PATCH)
        if canary is not None and current.canary != str(canary):
            self.api("PATCH", self.deployment_path(self.canary_deployment), self.deployment_patch(canary),
                     STRATEGIC_MERGE_PATCH)
        if check_holdback(stable, _check_weight(canary, canary_weight), holdback, holdback_weight) \
                and current.holdback != str(holdback):
            self.api("PATCH", self.deployment_path(self.holdback_deployment), self.deployment_patch(str(holdback)),
                     STRATEGIC_MERGE_PATCH)
        answer = self.api("PATCH", self.route_path, patch, MERGE_PATCH)
        return self._status(answer)

    def get_routes(self) -> RouteStatus:
        return self._status(self.api("GET", self.route_path, None, None))

    def _status(self, route: dict[str, Any]) -> RouteStatus:
        annotations = (route.get("metadata") or {}).get("annotations") or {}
        weights = {self.stable_service: 0, self.canary_service: 0, self.holdback_service: 0}
        for rule in (route.get("spec") or {}).get("rules") or []:
            for ref in rule.get("backendRefs") or []:
                if ref.get("name") in weights:
                    weights[ref["name"]] = int(ref.get("weight", 1))
        total = sum(weights.values())
        canary = annotations.get(CANARY_ANNOTATION)
        held = annotations.get(HOLDBACK_ANNOTATION)
        pct = round(100 * weights[self.canary_service] / total) if total and canary else 0
        held_pct = round(100 * weights[self.holdback_service] / total) if total and held else 0
        rv = (route.get("metadata") or {}).get("resourceVersion")
        return RouteStatus(annotations.get(STABLE_ANNOTATION), canary, pct, None if rv is None else str(rv),
                           held if held_pct else None, held_pct)


def kubernetes_api(config_file: str | None = None, context: str | None = None) -> KubeApi:
    """A :data:`KubeApi` backed by the official client (in-cluster config when no kubeconfig is given)."""
    from kubernetes import client, config

    if config_file or context:
        config.load_kube_config(config_file=config_file, context=context)
    else:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
    api_client = client.ApiClient()

    def call(method: str, path: str, body: Any, content_type: str | None) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            data = api_client.call_api(
                path, method, header_params=headers, body=body, auth_settings=["BearerToken"],
                # kubernetes>=35 takes a status -> type map (its `response_type` argument is gone).
                response_types_map={200: "object", 201: "object"}, _return_http_data_only=True,
            )
        except client.ApiException as exc:
            if exc.status == 409:  # resourceVersion mismatch on our compare-and-set patch
                raise RouteConflict(f"kubernetes {method} {path}: 409 {exc.reason}: the object changed since it "
                                    "was read; nothing changed") from None
            raise RouterError(f"kubernetes {method} {path}: {exc.status} {exc.reason}") from None
        return dict(data or {})

    return call


def router_from_settings(gateway_url: str | None = None, token: str | None = None) -> Router:
    """The router ``MLCD_ROUTER_BACKEND`` names: ``local`` (default) or ``kubernetes``."""
    import os

    from mlcd.settings import get_settings

    s = get_settings()
    if s.router_backend == "kubernetes":
        return KubernetesHTTPRouteRouter(
            kubernetes_api(os.environ.get("MLCD_KUBECONFIG")),
            namespace=os.environ.get("MLCD_K8S_NAMESPACE", "mlcd"),
        )
    if s.router_backend != "local":
        raise ValueError(f"unknown MLCD_ROUTER_BACKEND {s.router_backend!r} (local or kubernetes)")
    return LocalGatewayRouter(gateway_url or s.gateway_url, token or s.admin_token)
