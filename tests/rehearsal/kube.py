"""A stand-in for the few Kubernetes objects serving needs: two gateway Deployments and the ``HTTPRoute``.

No Kubernetes API server can run here (the project's one allowed exception to "real components"), so this
answers the calls :class:`mlcd.rollout.router.KubernetesHTTPRouteRouter` makes, over HTTP, through the official
``kubernetes`` client and a kubeconfig, exactly as on a cluster:

* ``GET`` / ``PATCH`` (JSON merge patch) of ``httproutes/mlcd-gateway``, with ``resourceVersion``
  compare-and-set (409 on a stale one);
* ``PATCH`` (strategic merge) of ``deployments/mlcd-gateway-{stable,canary}``: the Deployment's gateway process
  is replaced by one pinned to the new ``MLCD_SERVE_VERSION`` (a Recreate rollout; the call returns once the new
  process is healthy, as ``kubectl rollout status`` would).

The data plane is :class:`Ingress`: ``/predict`` is sent to the stable or the canary Deployment by the route's
weights, and ``/feedback`` to the one that served the prediction. Each gateway is a real ``mlcd serve`` process
with its own ``MLCD_HOME``; Prometheus scrapes both (see :class:`tests.rehearsal.services.Prometheus`).
"""

from __future__ import annotations

import json
import random
import threading
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.rehearsal.services import Gateway, free_port

NAMESPACE = "mlcd"
ROUTE = "mlcd-gateway"
DEPLOYMENTS = {"mlcd-gateway-stable": "stable", "mlcd-gateway-canary": "canary"}
SERVICES = {"mlcd-gateway-stable": "stable", "mlcd-gateway-canary": "canary"}
ROUTE_PATH = f"/apis/gateway.networking.k8s.io/v1/namespaces/{NAMESPACE}/httproutes/{ROUTE}"
DEPLOYMENT_PREFIX = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class ServingCluster:
    """The Deployments (gateway processes on fixed ports) and the HTTPRoute; thread-safe."""

    def __init__(self, root: Path, gateway_env: Mapping[str, str],
                 on_targets: Callable[[list[dict[str, Any]]], None]) -> None:
        self.root = root
        self.gateway_env = dict(gateway_env)
        self.ports = {name: free_port() for name in DEPLOYMENTS}
        self.gateways: dict[str, Gateway] = {}
        self.rollouts: list[tuple[str, str]] = []  # (deployment, version) in order, for assertions
        self._lock = threading.RLock()
        self._resource_version = 1
        self.route: dict[str, Any] = {
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": ROUTE, "namespace": NAMESPACE, "resourceVersion": "1", "annotations": {}},
            "spec": {"rules": [{"backendRefs": [{"name": name, "port": 8000, "weight": 100 if v == "stable" else 0}
                                                for name, v in SERVICES.items()]}]},
        }
        # Prometheus discovers the Deployments' pods (both ports, whether or not a pod runs there yet).
        on_targets([{"targets": [f"127.0.0.1:{port}" for port in self.ports.values()],
                     "labels": {"namespace": "rehearsal"}}])

    def url_of(self, deployment: str) -> str:
        return f"http://127.0.0.1:{self.ports[deployment]}"

    # -- API -------------------------------------------------------------------------------------------------
    def patch_route(self, patch: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            wanted = (patch.get("metadata") or {}).get("resourceVersion")
            current = self.route["metadata"]["resourceVersion"]
            if wanted is not None and str(wanted) != current:
                return 409, {"kind": "Status", "status": "Failure", "reason": "Conflict", "code": 409,
                             "message": f"resourceVersion {wanted} is stale (now {current})"}
            patch = merge_patch(patch, {"metadata": {"resourceVersion": None}})
            self.route = merge_patch(self.route, patch)
            self._resource_version += 1
            self.route["metadata"]["resourceVersion"] = str(self._resource_version)
            return 200, self.route

    def patch_deployment(self, name: str, patch: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if name not in DEPLOYMENTS:
            return 404, {"kind": "Status", "code": 404, "message": f"deployment {name} not found"}
        containers = patch["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for c in containers for e in c.get("env", [])}
        version = str(env["MLCD_SERVE_VERSION"])
        with self._lock:  # one rollout at a time, as a Deployment controller serialises its own
            old = self.gateways.pop(name, None)
            if old is not None:
                old.stop()
            gateway = Gateway(self.root / name, DEPLOYMENTS[name], version, self.ports[name], self.gateway_env)
            gateway.start()
            self.gateways[name] = gateway
            self.rollouts.append((name, version))
        return 200, {"kind": "Deployment", "metadata": {"name": name, "namespace": NAMESPACE},
                     "spec": {"template": {"spec": {"containers": containers}}}}

    def weights(self) -> dict[str, int]:
        with self._lock:
            refs = self.route["spec"]["rules"][0]["backendRefs"]
            return {ref["name"]: int(ref.get("weight", 1)) for ref in refs}

    def stop(self) -> None:
        with self._lock:
            for gateway in self.gateways.values():
                gateway.stop()
            self.gateways.clear()


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


def _reply(handler: BaseHTTPRequestHandler, status: int, body: Any) -> None:
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def api_server(cluster: ServingCluster, token: str) -> _Server:
    """The Kubernetes API subset, bearer-token protected."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _authorized(self) -> bool:
            if self.headers.get("Authorization") == f"Bearer {token}":
                return True
            _reply(self, 401, {"kind": "Status", "code": 401, "message": "Unauthorized"})
            return False

        def do_GET(self) -> None:  # noqa: N802
            if not self._authorized():
                return
            if self.path.split("?")[0] == ROUTE_PATH:
                with cluster._lock:
                    _reply(self, 200, cluster.route)
                return
            _reply(self, 404, {"kind": "Status", "code": 404, "message": self.path})

        def do_PATCH(self) -> None:  # noqa: N802
            if not self._authorized():
                return
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            path = self.path.split("?")[0]
            if path == ROUTE_PATH:
                _reply(self, *cluster.patch_route(body))
            elif path.startswith(DEPLOYMENT_PREFIX):
                try:
                    _reply(self, *cluster.patch_deployment(path[len(DEPLOYMENT_PREFIX):], body))
                except Exception as exc:  # noqa: BLE001 - a pod that never became ready: the rollout failed
                    _reply(self, 500, {"kind": "Status", "code": 500, "message": str(exc)[-500:]})
            else:
                _reply(self, 404, {"kind": "Status", "code": 404, "message": path})

    return _Server(Handler)


def ingress(cluster: ServingCluster) -> _Server:
    """The Gateway API implementation's data plane: weighted ``/predict``, sticky ``/feedback``."""
    served_by: OrderedDict[str, str] = OrderedDict()
    lock = threading.Lock()
    rng = random.Random(0)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _forward(self, deployment: str, body: bytes) -> tuple[int, bytes]:
            req = urllib.request.Request(f"{cluster.url_of(deployment)}{self.path}", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    return resp.status, resp.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read()
            except OSError as exc:
                return 503, json.dumps({"detail": f"upstream {deployment} unavailable: {exc}"}).encode()

        def _send(self, status: int, data: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path == "/feedback":
                pid = str(json.loads(body or b"{}").get("prediction_id"))
                with lock:
                    deployment = served_by.get(pid, "mlcd-gateway-stable")
                self._send(*self._forward(deployment, body))
                return
            weights = cluster.weights()
            total = sum(weights.values()) or 1
            pick = rng.uniform(0, total)
            deployment = "mlcd-gateway-stable" if pick < weights.get("mlcd-gateway-stable", 0) else "mlcd-gateway-canary"
            status, data = self._forward(deployment, body)
            if status == 200:
                try:
                    for pred in json.loads(data).get("predictions", []):
                        with lock:
                            served_by[str(pred.get("prediction_id"))] = deployment
                            while len(served_by) > 100_000:
                                served_by.popitem(last=False)
                except ValueError:
                    pass
            self._send(status, data)

    return _Server(Handler)


def kubeconfig(api_url: str, token: str) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "rehearsal",
        "clusters": [{"name": "rehearsal", "cluster": {"server": api_url}}],
        "users": [{"name": "mlcd", "user": {"token": token}}],
        "contexts": [{"name": "rehearsal", "context": {"cluster": "rehearsal", "user": "mlcd",
                                                       "namespace": NAMESPACE}}],
    })
