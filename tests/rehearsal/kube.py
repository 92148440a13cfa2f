"""A stand-in for the few Kubernetes objects serving needs: two gateway Deployments, their Services, the ``HTTPRoute``.

No Kubernetes API server can run here (the project's one allowed exception to "real components"), so this
answers the calls :class:`mlcd.rollout.router.KubernetesHTTPRouteRouter` makes, over HTTP, through the official
``kubernetes`` client and a kubeconfig, as a real API server does, inconvenient parts included:

* ``GET`` / ``PATCH`` (JSON merge patch) of ``httproutes/mlcd-gateway``, with ``resourceVersion``
  compare-and-set (409 on a stale one);
* ``GET`` / ``PATCH`` (strategic merge patch) of ``deployments/mlcd-gateway-{stable,canary}``. The PATCH is
  answered **at once** with the new ``metadata.generation``; a controller thread observes it a moment later and
  rolls the Deployment like ``RollingUpdate`` with ``maxSurge: 1, maxUnavailable: 0``: a new pod (a real
  ``mlcd serve`` process, :func:`launch_pod`) on its own port, which turns ready when its gateway has loaded the
  version (``/v2/health/ready``), and **sometimes never** (a version that cannot load); only then is the old pod
  stopped. ``status`` (observedGeneration, replicas, updated/ready/available, the ``Progressing`` condition with
  ``ProgressDeadlineExceeded``) says where the rollout is, as the real controller writes it;
* ``GET`` through the Service proxy (``services/{name}:{port}/proxy/...``) to a ready pod of that Service, 503
  when it has no ready endpoint (what the API server answers);
* every request is checked against the ``mlcd-rollout`` Role of ``deploy/k8s/rbac.yaml`` (403 for anything it
  does not grant), so the manifests' RBAC is exercised by the calls the router really makes.

The data plane is :func:`ingress`: the route's rules as the API server holds them (``/predict`` and ``/v2`` by
the weights, an authenticated ``/feedback`` to either Service), each Service to its ready pods only (503 when
none); :attr:`ServingCluster.unready_weights`
records every route change that gave weight to a Service without a ready pod serving its pinned version, which
the tests assert never happens. Prometheus scrapes every live pod (see
:class:`tests.rehearsal.services.Prometheus`).
"""

from __future__ import annotations

import copy
import json
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

import yaml

from mlcd.rollout.router import MERGE_PATCH, STRATEGIC_MERGE_PATCH, VERSION_ANNOTATION
from tests.rehearsal.services import (
    FEEDBACK_TOKEN,
    GATEWAY_SECRET,
    REPO,
    VENV_BIN,
    Proc,
    base_env,
    cleanup,
    free_port,
)

NAMESPACE = "mlcd"
ROUTE = "mlcd-gateway"
DEPLOYMENTS = {"mlcd-gateway-stable": "stable", "mlcd-gateway-canary": "canary", "mlcd-gateway-holdback": "holdback"}
SERVICES = {name: name for name in DEPLOYMENTS}  # Service -> the Deployment behind it (same names)
SERVICE_PORT = 8000
ROUTE_PATH = f"/apis/gateway.networking.k8s.io/v1/namespaces/{NAMESPACE}/httproutes/{ROUTE}"
DEPLOYMENT_PREFIX = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/"
SERVICE_PREFIX = f"/api/v1/namespaces/{NAMESPACE}/services/"
RBAC = REPO / "deploy" / "k8s" / "rbac.yaml"
ROUTE_MANIFEST = REPO / "deploy" / "k8s" / "httproute.yaml"
ROLLOUT_ROLE = "mlcd-rollout"
HTTP_VERBS = {"GET": "get", "PATCH": "patch", "PUT": "update", "POST": "create", "DELETE": "delete"}
# Lists a strategic merge patch merges by their `name` key (patchMergeKey in the Kubernetes API types).
MERGE_BY_NAME = {"containers", "initContainers", "env", "ports", "volumeMounts", "volumes"}
OBSERVE_DELAY_S = 0.3  # the controller sees a new generation a moment after the PATCH was answered


# -- the pods ----------------------------------------------------------------------------------------------------
class PodHandle(Protocol):
    """One running pod of a Deployment, as the controller sees it (what :func:`launch_pod` returns)."""

    @property
    def url(self) -> str: ...

    def ready(self) -> bool:
        """Its readiness probe: ``/v2/health/ready`` answers 200."""
        ...

    def alive(self) -> bool: ...

    def stop(self) -> None: ...


# (version, the pod template's env, port, the pod's own folder) -> a started pod; it may never become ready.
PodLauncher = Callable[[str, Mapping[str, str], int, Path], PodHandle]


def probe_ready(url: str, timeout: float = 2.0) -> bool:
    """A readiness probe (httpGet): ready on a 2xx answer only."""
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=timeout) as resp:  # noqa: S310 - loopback
            return bool(200 <= resp.status < 300)
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass(eq=False)
class GatewayPod:
    """A pod of the gateway image: one ``mlcd serve`` process with its own ``HOME``, ``MLCD_HOME`` and cwd."""

    proc: Proc
    port: int
    root: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        return self.alive() and probe_ready(self.url)

    def alive(self) -> bool:
        return self.proc.alive()

    def stop(self) -> None:
        self.proc.stop()
        cleanup(self.root)


def launch_pod(version: str, env: Mapping[str, str], port: int, root: Path) -> PodHandle:
    """Start one pod of a gateway Deployment pinned to ``version``; returns at once (readiness comes later).

    The one place a pod is started: the images' rehearsal swaps it for a container of the gateway image.
    """
    pod_env = base_env(root / "home", **{**dict(env), "MLCD_SERVE_VERSION": version,
                                         "MLCD_HOME": str(root / "mlcd-home")})
    argv = [str(VENV_BIN / "python"), "-m", "mlcd.cli", "serve", "--port", str(port)]
    variant = env.get("MLCD_SERVE_VARIANT", "stable")
    proc = Proc(f"gateway-{variant}-v{version}", argv, pod_env, root / "cwd", root / "gateway.log").start()
    return GatewayPod(proc, port, root)


# -- the API objects ---------------------------------------------------------------------------------------------
def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def strategic_merge_patch(target: Any, patch: Any, key: str = "") -> Any:
    """The strategic merge patch of built-in kinds: maps merge, lists in :data:`MERGE_BY_NAME` merge by name."""
    if isinstance(patch, list) and key in MERGE_BY_NAME and isinstance(target, list):
        out = [copy.deepcopy(item) for item in target]
        for item in patch:
            name = item.get("name") if isinstance(item, dict) else None
            at = next((i for i, old in enumerate(out) if isinstance(old, dict) and old.get("name") == name), None)
            if at is None:
                out.append(copy.deepcopy(item))
            else:
                out[at] = strategic_merge_patch(out[at], item)
        return out
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, value in patch.items():
        if value is None:
            out.pop(k, None)
        else:
            out[k] = strategic_merge_patch(out.get(k), value, k)
    return out


def deployment_errors(obj: dict[str, Any]) -> list[str]:
    """What the API server's validation of a Deployment would refuse in the fields a patch can reach."""
    errors = []
    template = obj.get("spec", {}).get("template", {})
    for i, container in enumerate(template.get("spec", {}).get("containers") or []):
        where = f"spec.template.spec.containers[{i}]"
        if not container.get("name"):
            errors.append(f"{where}.name: Required value")
        if not container.get("image"):
            errors.append(f"{where}.image: Required value")
        for j, env in enumerate(container.get("env") or []):
            if "value" in env and not isinstance(env["value"], str):
                errors.append(f"{where}.env[{j}].value: Invalid type: expected string")
    for k, v in (template.get("metadata", {}).get("annotations") or {}).items():
        if not isinstance(v, str):
            errors.append(f"spec.template.metadata.annotations[{k}]: Invalid type: expected string")
    return errors


def _status(code: int, reason: str, message: str) -> tuple[int, dict[str, Any]]:
    return code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code,
                  "message": message}


def rollout_rules(path: Path = RBAC, role: str = ROLLOUT_ROLE) -> list[dict[str, Any]]:
    """The rules of the Role the router's identity is bound to, read from the manifests themselves."""
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "Role" and doc["metadata"]["name"] == role:
            return list(doc["rules"])
    raise LookupError(f"no Role {role} in {path}")


def request_attributes(method: str, path: str) -> tuple[str, str, str, str] | None:
    """(apiGroup, resource[/subresource], name, verb) of a namespaced request, as the RBAC authorizer sees it."""
    parts = path.strip("/").split("/")
    verb = HTTP_VERBS.get(method, method.lower())
    if parts[:2] == ["api", "v1"] and len(parts) >= 5 and parts[2] == "namespaces":
        group, rest = "", parts[4:]
    elif parts[:1] == ["apis"] and len(parts) >= 6 and parts[3] == "namespaces":
        group, rest = parts[1], parts[5:]
    else:
        return None
    if len(parts) >= 4 and parts[3 if group == "" else 4] != NAMESPACE:
        return None
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    if len(rest) > 2:
        resource = f"{resource}/{rest[2]}"
    return group, resource, name, verb


def allowed(rules: list[dict[str, Any]], group: str, resource: str, name: str, verb: str) -> bool:
    for rule in rules:
        names = rule.get("resourceNames")
        if (group in rule.get("apiGroups", []) and resource in rule.get("resources", [])
                and verb in rule.get("verbs", []) and (not names or name in names)):
            return True
    return False


@dataclass(eq=False)
class _Pod:
    name: str
    version: str
    generation: int  # the Deployment generation whose template made it (its ReplicaSet)
    handle: PodHandle
    ready: bool = False


@dataclass(eq=False)
class _Deployment:
    name: str
    obj: dict[str, Any]
    observed: int = 0
    patched_at: float = 0.0
    progress_since: float = 0.0
    stalled: bool = False
    pods: list[_Pod] = field(default_factory=list)

    @property
    def generation(self) -> int:
        return int(self.obj["metadata"]["generation"])

    @property
    def version(self) -> str | None:
        annotations = self.obj["spec"]["template"]["metadata"].get("annotations") or {}
        return annotations.get(VERSION_ANNOTATION)

    def env(self) -> dict[str, str]:
        container = self.obj["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e["value"] for e in container.get("env") or [] if "value" in e}


def _initial_deployment(name: str, variant: str) -> dict[str, Any]:
    """The Deployment as applied, before mlcd pins a version (the stand-in starts its pods only once pinned)."""
    labels = {"app.kubernetes.io/name": "mlcd-gateway", "mlcd.io/variant": variant}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE, "generation": 1, "resourceVersion": "1", "labels": labels},
        "spec": {
            "replicas": 1, "progressDeadlineSeconds": 600, "selector": {"matchLabels": labels},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": labels, "annotations": {}},
                "spec": {"containers": [{
                    "name": "gateway", "image": "localhost/mlcd-gateway:rehearsal",
                    "env": [{"name": "MLCD_SERVE_VARIANT", "value": variant},
                            # from the mlcd-gateway Secret (deploy/k8s): the same on every pod of both variants
                            {"name": "MLCD_FEEDBACK_TOKEN", "value": FEEDBACK_TOKEN},
                            {"name": "MLCD_GATEWAY_SECRET", "value": GATEWAY_SECRET}],
                }]},
            },
        },
    }


class ServingCluster:
    """The Deployments (their controller and pods), the Services' endpoints and the HTTPRoute; thread-safe.

    Args:
        root: a folder for the pods' own folders.
        gateway_env: what every gateway pod's template adds to its env (the cluster settings).
        on_targets: told the scrape targets (every live pod) whenever pods come or go (Prometheus' discovery).
        launcher: starts a pod (:func:`launch_pod` unless a test swaps it).
        progress_deadline_s: the Deployments' ``progressDeadlineSeconds``.
    """

    def __init__(self, root: Path, gateway_env: Mapping[str, str],
                 on_targets: Callable[[list[dict[str, Any]]], None], launcher: PodLauncher = launch_pod,
                 progress_deadline_s: float = 600.0, rules: list[dict[str, Any]] | None = None) -> None:
        self.root = root
        self.gateway_env = dict(gateway_env)
        self.on_targets = on_targets
        self.launcher = launcher
        self.progress_deadline_s = progress_deadline_s
        self.rules = rollout_rules() if rules is None else rules
        self.rollouts: list[tuple[str, str]] = []  # (deployment, version) as pinned, in order, for assertions
        self.unready_weights: list[str] = []  # route changes that weighted a Service with no ready pod serving it
        self.refused: list[str] = []  # requests RBAC refused
        self.routed: dict[tuple[str, str], int] = {}  # (path, Service) -> requests the ingress sent there
        self._lock = threading.RLock()
        self._revision = 1  # one resourceVersion sequence for every object, as etcd's revision
        self._pods_made = 0
        self.deployments = {name: _Deployment(name, _initial_deployment(name, v)) for name, v in DEPLOYMENTS.items()}
        for dep in self.deployments.values():
            dep.obj["spec"]["template"]["spec"]["containers"][0]["env"] += [
                {"name": k, "value": str(v)} for k, v in self.gateway_env.items()]
            dep.observed = dep.generation
        # The route as deploy/k8s/httproute.yaml applies it, less the version annotation: these Deployments start
        # unpinned, and the first set_routes pins the stable one.
        self.route: dict[str, Any] = yaml.safe_load(ROUTE_MANIFEST.read_text())
        self.route["metadata"].update({"resourceVersion": "1", "annotations": {}})
        self._targets: list[str] | None = None
        self._publish_targets()
        self._stopping = threading.Event()
        self._controller = threading.Thread(target=self._control_loop, name="deployment-controller", daemon=True)
        self._controller.start()

    # -- what the tests read ------------------------------------------------------------------------------
    def url_of(self, deployment: str) -> str | None:
        """A ready endpoint of the Service in front of ``deployment`` (the newest), or None: no endpoint."""
        with self._lock:
            ready = [p for p in self.deployments[deployment].pods if p.ready]
            return ready[-1].handle.url if ready else None

    def served_version(self, deployment: str) -> str | None:
        with self._lock:
            ready = [p for p in self.deployments[deployment].pods if p.ready]
            return ready[-1].version if ready else None

    def weights(self) -> dict[str, int]:
        with self._lock:
            refs = self.route["spec"]["rules"][0]["backendRefs"]
            return {ref["name"]: int(ref.get("weight", 1)) for ref in refs}

    # -- API ----------------------------------------------------------------------------------------------
    def authorize(self, method: str, path: str) -> tuple[int, dict[str, Any]] | None:
        """None when the Role grants the request, else the API server's 403."""
        attrs = request_attributes(method, path)
        if attrs is not None and allowed(self.rules, *attrs):
            return None
        group, resource, name, verb = attrs or ("?", path, "", method)
        why = (f'serviceaccounts "mlcd-airflow" is forbidden: cannot {verb} resource "{resource}" in API group '
               f'"{group}" name "{name}" in the namespace "{NAMESPACE}"')
        self.refused.append(why)
        return _status(403, "Forbidden", why)

    def _bump(self) -> str:
        self._revision += 1
        return str(self._revision)

    def patch_route(self, patch: dict[str, Any], content_type: str | None = MERGE_PATCH) -> tuple[int, dict[str, Any]]:
        if content_type != MERGE_PATCH:  # a CRD takes no strategic merge patch
            return _status(415, "UnsupportedMediaType", f"the body of the request was in an unsupported format: "
                                                        f"{content_type} (HTTPRoute is a custom resource)")
        with self._lock:
            wanted = (patch.get("metadata") or {}).get("resourceVersion")
            current = self.route["metadata"]["resourceVersion"]
            if wanted is not None and str(wanted) != current:
                return _status(409, "Conflict", f'Operation cannot be fulfilled on httproutes "{ROUTE}": the object '
                                                f"has been modified (resourceVersion {wanted}, now {current})")
            patch = merge_patch(patch, {"metadata": {"resourceVersion": None}})
            self.route = merge_patch(self.route, patch)
            self.route["metadata"]["resourceVersion"] = self._bump()
            self._check_weights()
            return 200, copy.deepcopy(self.route)

    def _check_weights(self) -> None:
        """Record a route that gives weight to a Service with no ready pod serving the version it names."""
        annotations = self.route["metadata"].get("annotations") or {}
        names = {"mlcd-gateway-stable": annotations.get("mlcd.io/stable-version"),
                 "mlcd-gateway-canary": annotations.get("mlcd.io/canary-version"),
                 "mlcd-gateway-holdback": annotations.get("mlcd.io/holdback-version")}
        for ref in self.route["spec"]["rules"][0]["backendRefs"]:
            if int(ref.get("weight", 1)) <= 0:
                continue
            deployment = SERVICES[ref["name"]]
            served = self.served_version(deployment)
            if served is None or served != names.get(ref["name"]):
                self.unready_weights.append(
                    f"{ref['name']} weighted {ref.get('weight')} for version {names.get(ref['name'])} while its "
                    f"ready pods serve {served}")

    def get_deployment(self, name: str) -> tuple[int, dict[str, Any]]:
        if name not in self.deployments:
            return _status(404, "NotFound", f'deployments.apps "{name}" not found')
        with self._lock:
            return 200, self._with_status(self.deployments[name])

    def patch_deployment(self, name: str, patch: dict[str, Any],
                         content_type: str | None = STRATEGIC_MERGE_PATCH) -> tuple[int, dict[str, Any]]:
        """Answered at once; the controller thread rolls the pods afterwards."""
        if name not in self.deployments:
            return _status(404, "NotFound", f'deployments.apps "{name}" not found')
        with self._lock:
            dep = self.deployments[name]
            if content_type == STRATEGIC_MERGE_PATCH:
                new = strategic_merge_patch(dep.obj, patch)
            elif content_type == MERGE_PATCH:
                new = merge_patch(dep.obj, patch)  # lists replaced whole: a container without its image fails
            else:
                return _status(415, "UnsupportedMediaType", f"unsupported patch type {content_type}")
            errors = deployment_errors(new)
            if new["spec"].get("selector") != dep.obj["spec"]["selector"]:
                errors.append("spec.selector: field is immutable")
            if errors:
                return _status(422, "Invalid", f'Deployment.apps "{name}" is invalid: {"; ".join(errors)}')
            if new["spec"] != dep.obj["spec"]:
                new["metadata"]["generation"] = dep.generation + 1
                dep.patched_at = time.monotonic()
                self.rollouts.append((name, str(_pinned(new))))
            new["metadata"]["resourceVersion"] = self._bump()
            dep.obj = new
            return 200, self._with_status(dep)

    def _with_status(self, dep: _Deployment) -> dict[str, Any]:
        obj = copy.deepcopy(dep.obj)
        updated = [p for p in dep.pods if p.generation == dep.observed]
        ready = [p for p in dep.pods if p.ready]
        want = int(dep.obj["spec"].get("replicas", 1))
        complete = len(updated) >= want and len(dep.pods) == len(updated) and all(p.ready for p in updated)
        if dep.stalled:
            progressing = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                           "message": f'ReplicaSet "{dep.name}-{dep.observed}" has timed out progressing.'}
        elif complete:
            progressing = {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                           "message": f'ReplicaSet "{dep.name}-{dep.observed}" has successfully progressed.'}
        else:
            progressing = {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
                           "message": f'ReplicaSet "{dep.name}-{dep.observed}" is progressing.'}
        available = {"type": "Available", "status": "True" if len(ready) >= want else "False",
                     "reason": "MinimumReplicasAvailable" if len(ready) >= want else "MinimumReplicasUnavailable"}
        obj["status"] = {
            "observedGeneration": dep.observed, "replicas": len(dep.pods), "updatedReplicas": len(updated),
            "readyReplicas": len(ready), "availableReplicas": len(ready),
            "unavailableReplicas": max(0, len(dep.pods) - len(ready)), "conditions": [available, progressing],
        }
        return obj

    def proxy(self, service_port: str, rest: str) -> tuple[int, bytes]:
        """GET through the Service proxy to one ready endpoint; the pod's answer as it is."""
        service, _, port = service_port.partition(":")
        if service not in SERVICES or port not in ("", str(SERVICE_PORT), "http"):
            return _encode(*_status(404, "NotFound", f'services "{service_port}" not found'))
        url = self.url_of(SERVICES[service])
        if url is None:
            return _encode(*_status(503, "ServiceUnavailable", f'no endpoints available for service "{service}"'))
        try:
            with urllib.request.urlopen(f"{url}{rest}", timeout=10) as resp:  # noqa: S310 - loopback
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError as exc:
            return _encode(*_status(503, "ServiceUnavailable", f"error trying to reach service: {exc}"))

    # -- the Deployment controller ------------------------------------------------------------------------
    def _control_loop(self) -> None:
        while not self._stopping.wait(0.2):
            for dep in list(self.deployments.values()):
                try:
                    self._reconcile(dep)
                except Exception as exc:  # noqa: BLE001 - a controller keeps going; the next pass retries
                    print(f"stand-in controller: {dep.name}: {type(exc).__name__}: {exc}")

    def _reconcile(self, dep: _Deployment) -> None:
        launch: tuple[str, dict[str, str], int] | None = None
        with self._lock:
            if dep.observed < dep.generation and time.monotonic() - dep.patched_at >= OBSERVE_DELAY_S:
                dep.observed, dep.stalled, dep.progress_since = dep.generation, False, time.monotonic()
                version = dep.version
                match = next((p for p in dep.pods if p.ready and p.version == version), None)
                for pod in list(dep.pods):  # a new ReplicaSet replaces any rollout still in progress
                    if not pod.ready and pod is not match:
                        self._remove(dep, pod)
                if match is not None:  # the template went back to a version a ready pod serves: adopt it
                    match.generation = dep.observed
                elif version is not None:
                    launch = (version, dep.env(), dep.observed)
            pending = [p for p in dep.pods if not p.ready]
        if launch is not None:
            self._launch(dep, *launch)
        for pod in pending:
            if pod.handle.ready():
                with self._lock:
                    pod.ready = True
                    if pod.generation == dep.observed:  # the new ReplicaSet is available: scale the old to 0
                        for old in [p for p in dep.pods if p is not pod]:
                            self._remove(dep, old)
        with self._lock:
            waiting = [p for p in dep.pods if p.generation == dep.observed and not p.ready]
            if waiting and time.monotonic() - dep.progress_since > self.progress_deadline_s:
                dep.stalled = True

    def _launch(self, dep: _Deployment, version: str, env: dict[str, str], generation: int) -> None:
        with self._lock:
            self._pods_made += 1
            name = f"{dep.name}-{generation}-{self._pods_made}"
        port = free_port()
        handle = self.launcher(version, env, port, self.root / name)
        with self._lock:
            if generation != dep.observed:  # superseded while it started
                handle.stop()
                return
            dep.pods.append(_Pod(name, version, generation, handle))
            self._publish_targets()

    def _remove(self, dep: _Deployment, pod: _Pod, wait: bool = False) -> None:
        """Out of the endpoints and the targets at once; the pod terminates in the background (as on a node),
        so no API call waits for a process to exit."""
        dep.pods.remove(pod)
        self._publish_targets()
        if wait:
            pod.handle.stop()
        else:
            threading.Thread(target=pod.handle.stop, name=f"terminate-{pod.name}", daemon=True).start()

    def _publish_targets(self) -> None:
        targets = sorted(p.handle.url.removeprefix("http://") for d in self.deployments.values() for p in d.pods)
        if targets != self._targets:
            self._targets = targets
            self.on_targets([{"targets": targets, "labels": {"namespace": "rehearsal"}}])

    def stop(self) -> None:
        self._stopping.set()
        self._controller.join(timeout=10)
        with self._lock:
            for dep in self.deployments.values():
                for pod in list(dep.pods):
                    self._remove(dep, pod, wait=True)


def _pinned(obj: dict[str, Any]) -> str | None:
    return (obj["spec"]["template"]["metadata"].get("annotations") or {}).get(VERSION_ANNOTATION)


def _encode(status: int, body: Any) -> tuple[int, bytes]:
    return status, json.dumps(body).encode()


class _Server:
    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> _Server:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _send(handler: BaseHTTPRequestHandler, status: int, data: bytes) -> None:
    try:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the client went away (the traffic generator stopping): nothing to answer


def _reply(handler: BaseHTTPRequestHandler, status: int, body: Any) -> None:
    _send(handler, status, json.dumps(body).encode())


def api_server(cluster: ServingCluster, token: str) -> _Server:
    """The Kubernetes API subset, bearer-token protected, each request authorised by the rollout Role."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _admitted(self, method: str, path: str) -> bool:
            if self.headers.get("Authorization") != f"Bearer {token}":
                _reply(self, *_status(401, "Unauthorized", "Unauthorized"))
                return False
            refusal = cluster.authorize(method, path)
            if refusal is not None:
                _reply(self, *refusal)
                return False
            return True

        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?")[0]
            if not self._admitted("GET", path):
                return
            if path == ROUTE_PATH:
                with cluster._lock:
                    _reply(self, 200, cluster.route)
            elif path.startswith(DEPLOYMENT_PREFIX):
                _reply(self, *cluster.get_deployment(path[len(DEPLOYMENT_PREFIX):]))
            elif path.startswith(SERVICE_PREFIX) and "/proxy" in path:
                service_port, _, rest = path[len(SERVICE_PREFIX):].partition("/proxy")
                _send(self, *cluster.proxy(service_port, rest or "/"))
            else:
                _reply(self, *_status(404, "NotFound", f"the server could not find the requested resource {path}"))

        def do_PATCH(self) -> None:  # noqa: N802
            path = self.path.split("?")[0]
            if not self._admitted("PATCH", path):
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            except ValueError as exc:
                _reply(self, *_status(400, "BadRequest", f"invalid JSON: {exc}"))
                return
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            if path == ROUTE_PATH:
                _reply(self, *cluster.patch_route(body, content_type))
            elif path.startswith(DEPLOYMENT_PREFIX):
                _reply(self, *cluster.patch_deployment(path[len(DEPLOYMENT_PREFIX):], body, content_type))
            else:
                _reply(self, *_status(404, "NotFound", f"the server could not find the requested resource {path}"))

    return _Server(Handler)


def rule_matches(rule: dict[str, Any], method: str, path: str, headers: Mapping[str, str]) -> bool:
    """Gateway API matching of one rule: any of its matches (path Exact/PathPrefix, method, headers) hits."""
    for match in rule.get("matches") or [{"path": {"type": "PathPrefix", "value": "/"}}]:
        want = match.get("path") or {"type": "PathPrefix", "value": "/"}
        value = want["value"]
        if want["type"] == "Exact":
            hit = path == value
        elif want["type"] == "PathPrefix":
            hit = value == "/" or path == value or path.startswith(value.rstrip("/") + "/")
        else:
            raise ValueError(f"unsupported path match {want['type']}")
        hit = hit and match.get("method", method) == method
        for header in match.get("headers") or []:
            given = headers.get(header["name"])
            if header.get("type", "Exact") == "Exact":
                hit = hit and given == header["value"]
            else:
                hit = hit and given is not None and re.search(header["value"], given) is not None
        if hit:
            return True
    return False


def ingress(cluster: ServingCluster) -> _Server:
    """The Gateway API implementation's data plane: the HTTPRoute's rules as they are now, each request to one
    backend Service by the rule's weights, each Service to one of its ready pods (404 when no rule matches)."""
    rng = random.Random(0)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _forward(self, method: str, deployment: str, body: bytes | None) -> tuple[int, bytes]:
            url = cluster.url_of(deployment)
            if url is None:  # what an Envoy answers for a backend with no healthy endpoint
                return 503, json.dumps({"detail": f"no healthy upstream for {deployment}"}).encode()
            headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization")}
            req = urllib.request.Request(f"{url}{self.path}", data=body, method=method, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback
                    return resp.status, resp.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read()
            except OSError as exc:
                return 503, json.dumps({"detail": f"upstream {deployment} unavailable: {exc}"}).encode()

        def _route(self, method: str) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else None
            path = self.path.split("?")[0]
            with cluster._lock:
                rules = copy.deepcopy(cluster.route["spec"]["rules"])
            rule = next((r for r in rules if rule_matches(r, method, path, self.headers)), None)
            if rule is None:
                _send(self, 404, json.dumps({"detail": "no route"}).encode())
                return
            refs = [(ref["name"], int(ref.get("weight", 1))) for ref in rule["backendRefs"]]
            total = sum(w for _, w in refs)
            if total <= 0:
                _send(self, 500, json.dumps({"detail": "every backend of the rule has weight 0"}).encode())
                return
            with lock:
                pick = rng.uniform(0, total)
            name = refs[-1][0]
            for ref_name, weight in refs:
                if pick < weight:
                    name = ref_name
                    break
                pick -= weight
            cluster.routed[(path, name)] = cluster.routed.get((path, name), 0) + 1
            _send(self, *self._forward(method, SERVICES[name], body))

        def do_POST(self) -> None:  # noqa: N802
            self._route("POST")

        def do_GET(self) -> None:  # noqa: N802
            self._route("GET")

    return _Server(Handler)


def kubeconfig(api_url: str, token: str) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "rehearsal",
        "clusters": [{"name": "rehearsal", "cluster": {"server": api_url}}],
        "users": [{"name": "mlcd", "user": {"token": token}}],
        "contexts": [{"name": "rehearsal", "context": {"cluster": "rehearsal", "user": "mlcd",
                                                       "namespace": NAMESPACE}}],
    })
