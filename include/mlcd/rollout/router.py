"""Where traffic weights are applied: the local gateway's admin API, or a Gateway API ``HTTPRoute``.

Both implement :class:`Router`; the canary logic never knows which one it drives (Flagger's mesh providers).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class RouteStatus:
    """What a router serves now."""

    stable: str | None
    canary: str | None
    canary_weight: int


@runtime_checkable
class Router(Protocol):
    def set_routes(self, stable: str, canary: str | None, canary_weight: int) -> RouteStatus:
        """Serve ``stable`` and, at ``canary_weight`` percent, ``canary`` (``None``: stable only)."""
        ...

    def get_routes(self) -> RouteStatus:
        """The versions and canary weight served now."""
        ...


class RouterError(RuntimeError):
    """The backend refused or could not be reached; the message says which and why."""


def _check_weight(canary: str | None, canary_weight: int) -> int:
    if isinstance(canary_weight, bool) or not 0 <= int(canary_weight) <= 100:
        raise ValueError(f"canary_weight must be in 0..100, got {canary_weight!r}")
    return int(canary_weight) if canary is not None else 0


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
            detail = exc.read().decode(errors="replace")[:300]
            raise RouterError(f"gateway {method} {path} answered {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise RouterError(f"gateway {self.url} unreachable: {exc}") from None

    @staticmethod
    def _status(body: dict[str, Any]) -> RouteStatus:
        return RouteStatus(body.get("stable"), body.get("canary"), int(body.get("canary_weight", 0)))

    def set_routes(self, stable: str, canary: str | None, canary_weight: int) -> RouteStatus:
        weight = _check_weight(canary, canary_weight)
        body = {"stable": str(stable), "canary": None if canary is None else str(canary), "canary_weight": weight}
        return self._status(self._call("POST", "/admin/routes", body))

    def get_routes(self) -> RouteStatus:
        return self._status(self._call("GET", "/admin/routes"))


# (method, path, body, content_type) → the decoded JSON answer of the Kubernetes API server
KubeApi = Callable[[str, str, Any, "str | None"], dict[str, Any]]

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
VERSION_ANNOTATION = "mlcd.io/model-version"
STABLE_ANNOTATION = "mlcd.io/stable-version"
CANARY_ANNOTATION = "mlcd.io/canary-version"


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

    @property
    def route_path(self) -> str:
        return f"/apis/gateway.networking.k8s.io/v1/namespaces/{self.namespace}/httproutes/{self.route_name}"

    def deployment_path(self, name: str) -> str:
        return f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{name}"

    def route_patch(self, stable: str, canary: str | None, canary_weight: int) -> dict[str, Any]:
        """The JSON merge patch that sets both weights (and records the versions as annotations)."""
        weight = _check_weight(canary, canary_weight)
        return {
            "metadata": {"annotations": {STABLE_ANNOTATION: str(stable), CANARY_ANNOTATION: canary}},
            "spec": {
                "rules": [
                    {
                        "backendRefs": [
                            {"name": self.stable_service, "port": self.port, "weight": 100 - weight},
                            {"name": self.canary_service, "port": self.port, "weight": weight},
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

    def set_routes(self, stable: str, canary: str | None, canary_weight: int) -> RouteStatus:
        """Pin changed versions into their Deployments, then move the weights on the HTTPRoute."""
        patch = self.route_patch(stable, canary, canary_weight)  # validates before anything is sent
        current = self.get_routes()
        if current.stable != str(stable):
            self.api("PATCH", self.deployment_path(self.stable_deployment), self.deployment_patch(stable),
                     STRATEGIC_MERGE_PATCH)
        if canary is not None and current.canary != str(canary):
            self.api("PATCH", self.deployment_path(self.canary_deployment), self.deployment_patch(canary),
                     STRATEGIC_MERGE_PATCH)
        answer = self.api("PATCH", self.route_path, patch, MERGE_PATCH)
        return self._status(answer)

    def get_routes(self) -> RouteStatus:
        return self._status(self.api("GET", self.route_path, None, None))

    def _status(self, route: dict[str, Any]) -> RouteStatus:
        annotations = (route.get("metadata") or {}).get("annotations") or {}
        weights = {self.stable_service: 0, self.canary_service: 0}
        for rule in (route.get("spec") or {}).get("rules") or []:
            for ref in rule.get("backendRefs") or []:
                if ref.get("name") in weights:
                    weights[ref["name"]] = int(ref.get("weight", 1))
        total = weights[self.stable_service] + weights[self.canary_service]
        canary = annotations.get(CANARY_ANNOTATION)
        pct = round(100 * weights[self.canary_service] / total) if total and canary else 0
        return RouteStatus(annotations.get(STABLE_ANNOTATION), canary, pct)


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
                response_type="object", _return_http_data_only=True,
            )
        except client.ApiException as exc:
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
