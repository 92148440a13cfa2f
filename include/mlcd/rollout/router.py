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
import time
import urllib.error
import urllib.parse
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


class RolloutNotReady(VersionRefused):
    """A Deployment did not get ready pods serving the pinned version in time: no weight was moved to it.

    A :class:`VersionRefused`, so a canary that cannot be served is rolled back with this reason (fail closed):
    its pods never became ready (an image or a model version that cannot load), or the rollout hit its
    ``progressDeadlineSeconds``, or the pods answer for another version. ``reason`` is the last thing seen.
    """

    def __init__(self, message: str, deployment: str = "", version: str = "", reason: str = ""):
        super().__init__(message)
        self.deployment = deployment
        self.version = version
        self.reason = reason


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
# The only paths the public HTTPRoute's weighted rule sends to the gateways: /predict and the Open Inference Protocol
# (/v2: health, metadata, infer). /admin, /metrics and /healthz stay on the internal Services (deploy/k8s/README.md);
# /feedback has its own authenticated rule (FEEDBACK_MATCHES).
PUBLIC_MATCHES: tuple[dict[str, Any], ...] = (
    {"path": {"type": "Exact", "value": "/predict"}, "method": "POST"},
    {"path": {"type": "PathPrefix", "value": "/v2"}},
)
# /feedback has a rule of its own, for requests that carry a bearer token only (the gateway checks the token,
# MLCD_FEEDBACK_TOKEN): a prediction id carries what its label needs and the replay check is in the shared ledger
# (mlcd.serving.feedback), so any pod of either variant takes any label and the rule needs no stickiness; it spreads
# labels over both Services while a canary is routed (its pods are known ready then), else the stable one.
FEEDBACK_MATCHES: tuple[dict[str, Any], ...] = (
    {"path": {"type": "Exact", "value": "/feedback"}, "method": "POST",
     "headers": [{"type": "RegularExpression", "name": "Authorization", "value": "^Bearer .+"}]},
)
VERSION_ANNOTATION = "mlcd.io/model-version"
# How long a pinned Deployment gets to roll out (pull, model load, readiness) before the step fails closed; below
# the Deployments' progressDeadlineSeconds (600), so the router gives up first and says why.
ROLLOUT_TIMEOUT_S = 300.0
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
        model_name: the registered model the gateways serve (their V2 health endpoint names it).
        rollout_timeout_s, poll_interval_s: how long a pinned Deployment may take to serve its version, and
            how often its status is read meanwhile (:meth:`wait_rollout`).

    **Weights wait for pods.** The API server answers a Deployment PATCH at once; the new pods start later
    (image pull, model load, readiness) and sometimes never. So before the HTTPRoute gives a backend a version
    or a weight, :meth:`wait_rollout` reads the Deployment until its controller has observed the new
    generation and every replica is updated and available (what ``kubectl rollout status`` checks), then asks
    the pods themselves, through the API server's Service proxy (the router's only network path is the API
    server, with its RBAC), whether they serve that version (``/v2/models/{model}/versions/{v}/ready``). On
    a timeout or a stalled rollout it raises :class:`RolloutNotReady` and the route is not patched.
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
        model_name: str = "mnist-cnn",
        rollout_timeout_s: float = ROLLOUT_TIMEOUT_S,
        poll_interval_s: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
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
        self.model_name = model_name
        self.rollout_timeout_s = float(rollout_timeout_s)
        self.poll_interval_s = float(poll_interval_s)
        self._sleep = sleep
        self._clock = clock

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
                    },
                    self.feedback_rule(canary),
                ]
            },
        }

    def feedback_rule(self, canary: str | None) -> dict[str, Any]:
        """The authenticated ``/feedback`` rule: both Services alike while a canary is routed, else stable only."""
        return {
            "matches": [dict(m) for m in FEEDBACK_MATCHES],
            "backendRefs": [
                {"name": self.stable_service, "port": self.port, "weight": 1},
                {"name": self.canary_service, "port": self.port, "weight": 1 if canary is not None else 0},
            ],
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
        raised as :class:`RouteConflict`. A pinned Deployment (and a canary given weight) must be serving its
        version first (:meth:`wait_rollout`), else :class:`RolloutNotReady` and the route is left as it was.
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
        pinned: list[tuple[str, str, str, int | None]] = []  # (deployment, service, version, generation)
        if current.stable != str(stable):
            pinned.append((self.stable_deployment, self.stable_service, str(stable),
                           self._pin(self.stable_deployment, stable)))
        if canary is not None and current.canary != str(canary):
            pinned.append((self.canary_deployment, self.canary_service, str(canary),
                           self._pin(self.canary_deployment, canary)))
        elif canary is not None and _check_weight(canary, canary_weight) > 0:
            # Same canary, more weight: its pods may still be starting (pinned by the previous step at 0 %).
            pinned.append((self.canary_deployment, self.canary_service, str(canary), None))
        if check_holdback(stable, _check_weight(canary, canary_weight), holdback, holdback_weight) \
                and current.holdback != str(holdback):
            pinned.append((self.holdback_deployment, self.holdback_service, str(holdback),
                           self._pin(self.holdback_deployment, str(holdback))))
        for deployment, service, version, generation in pinned:
            self.wait_rollout(deployment, service, version, generation)
        answer = self.api("PATCH", self.route_path, patch, MERGE_PATCH)
        return self._status(answer)


    def _pin(self, deployment: str, version: str) -> int | None:
        """PATCH the Deployment to ``version``; returns the generation the answer carries (what to wait for)."""
        answer = self.api("PATCH", self.deployment_path(deployment), self.deployment_patch(version),
                          STRATEGIC_MERGE_PATCH)
        generation = (answer.get("metadata") or {}).get("generation")
        return generation if isinstance(generation, int) and not isinstance(generation, bool) else None

    def service_proxy_path(self, service: str, path: str) -> str:
        """``path`` on ``service`` through the API server's Service proxy (RBAC: ``services/proxy`` get)."""
        return f"/api/v1/namespaces/{self.namespace}/services/{service}:{self.port}/proxy{path}"

    def version_ready_path(self, version: str) -> str:
        """The Open Inference Protocol's per-version readiness, 200 only where this version is loaded."""
        name = urllib.parse.quote(self.model_name, safe="")
        return f"/v2/models/{name}/versions/{urllib.parse.quote(str(version), safe='')}/ready"

    def wait_rollout(self, deployment: str, service: str, version: str, generation: int | None = None) -> None:
        """Return once ``deployment`` serves ``version`` on all its replicas; :class:`RolloutNotReady` if not.

        Args:
            deployment, service: the Deployment pinned to ``version`` and the Service in front of its pods.
            generation: the ``metadata.generation`` the pinning PATCH answered (None: the current one).
        """
        deadline = self._clock() + self.rollout_timeout_s
        while True:
            check = rollout_check(self.api("GET", self.deployment_path(deployment), None, None), version,
                                  generation)
            reason = check.reason
            if check.done:
                unserved = self._pods_serve(service, version, check.replicas)
                if unserved is None:
                    return
                reason = unserved
            if check.failed or self._clock() >= deadline:
                why = reason if check.failed else f"not ready after {self.rollout_timeout_s:.0f}s: {reason}"
                raise RolloutNotReady(
                    f"Deployment {self.namespace}/{deployment} does not serve version {version}: {why}; "
                    "the HTTPRoute was not changed", deployment=deployment, version=str(version), reason=why)
            self._sleep(self.poll_interval_s)

    def _pods_serve(self, service: str, version: str, replicas: int) -> str | None:
        """None when every probe through ``service`` says ``version`` is ready, else what was answered.

        One probe per replica: after a complete rollout the Service's endpoints are the new pods only, and
        each probe lands on one of them.
        """
        path = self.service_proxy_path(service, self.version_ready_path(version))
        for _ in range(max(1, replicas)):
            try:
                answer = self.api("GET", path, None, None)
            except RouterError as exc:  # 503 no endpoints / the pod's own 404 or 503: not serving it yet
                return f"its pods do not serve it yet ({exc})"
            if answer.get("ready") is not True:
                return f"a pod answered {json.dumps(answer)[:200]}"
        return None

    def get_routes(self) -> RouteStatus:
        return self._status(self.api("GET", self.route_path, None, None))

    def _status(self, route: dict[str, Any]) -> RouteStatus:
        annotations = (route.get("metadata") or {}).get("annotations") or {}
        weights = {self.stable_service: 0, self.canary_service: 0, self.holdback_service: 0}
        for rule in (route.get("spec") or {}).get("rules") or []:
            if rule.get("matches") == [dict(m) for m in FEEDBACK_MATCHES]:
                continue  # labels' rule: not the traffic split
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


@dataclass(frozen=True)
class RolloutCheck:
    """One reading of a Deployment's rollout: ``done`` (all replicas updated and available), ``failed``
    (it will not finish by itself), and the reason in words either way."""

    done: bool
    failed: bool
    reason: str
    replicas: int = 1


def rollout_check(deployment: dict[str, Any], version: str, generation: int | None = None) -> RolloutCheck:
    """Judge a Deployment object as ``kubectl rollout status`` does, for a pod template pinned to ``version``.

    Done only when the controller observed the generation that pinned it, every replica runs the new
    template (updated), none of the old ones is left, and all are available. A ``Progressing`` condition with
    reason ``ProgressDeadlineExceeded`` (the pods never got ready within ``progressDeadlineSeconds``) or a
    template pinned to another version (someone else patched it meanwhile) fails at once.
    """
    meta = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    annotations = ((spec.get("template") or {}).get("metadata") or {}).get("annotations") or {}
    pinned = annotations.get(VERSION_ANNOTATION)
    if pinned is not None and str(pinned) != str(version):
        return RolloutCheck(False, True, f"its pod template is pinned to version {pinned} now (changed meanwhile)")
    wanted = generation if generation is not None else meta.get("generation")
    replicas = int(spec.get("replicas", 1))
    observed = status.get("observedGeneration")
    if wanted is not None and (observed is None or int(observed) < int(wanted)):
        return RolloutCheck(False, False, f"generation {wanted} not yet observed (at {observed})", replicas)
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return RolloutCheck(False, True, f"rollout stalled: {cond.get('message') or 'ProgressDeadlineExceeded'}",
                                replicas)
    updated = int(status.get("updatedReplicas", 0))
    total = int(status.get("replicas", 0))
    available = int(status.get("availableReplicas", 0))
    if updated < replicas:
        return RolloutCheck(False, False, f"{updated} of {replicas} replicas updated", replicas)
    if total > updated:
        return RolloutCheck(False, False, f"{total - updated} old replicas still running", replicas)
    if available < updated:
        return RolloutCheck(False, False, f"{available} of {updated} updated replicas available", replicas)
    return RolloutCheck(True, False, f"{available} of {replicas} replicas available", replicas)


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
            model_name=s.model_name,
            rollout_timeout_s=float(os.environ.get("MLCD_K8S_ROLLOUT_TIMEOUT_S", ROLLOUT_TIMEOUT_S)),
        )
    if s.router_backend != "local":
        raise ValueError(f"unknown MLCD_ROUTER_BACKEND {s.router_backend!r} (local or kubernetes)")
    return LocalGatewayRouter(gateway_url or s.gateway_url, token or s.admin_token)
