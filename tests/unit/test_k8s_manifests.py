"""Every YAML document under deploy/k8s/, checked offline: schemas, cross-references, least-privilege RBAC.

Built-in kinds (core, apps, rbac, …) are validated against the official Kubernetes OpenAPI schema shipped in
kubernetes-validate, strict (an unknown or misspelt field fails), for the oldest and the newest version this
project supports. CRD kinds have no schema there: HTTPRoute and InferenceService get a structural check here
(the fields mlcd relies on); the full Gateway API v1 schema check of httproute.yaml lives in
test_router_k8s.py. A kind that is neither fails, so a new manifest cannot slip in unchecked. Helm values
files are not manifests: they are checked for the names they share with rbac.yaml.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

pytestmark = pytest.mark.unit

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
VERSIONS = ("1.30.0", "1.37.0")  # oldest supported cluster, newest schema kubernetes-validate ships
HELM_VALUES = {"airflow-values.yaml"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
WORKLOAD_NS = "mlcd"
TRAINING_NS = "mlcd-training"
AIRFLOW_SA = ("airflow", "mlcd-airflow")
TRAINER_SA = (TRAINING_NS, "mlcd-trainer")
# The only Secrets a pod in the training namespace reads: the trainer's own.
TRAINER_SECRETS = {"mlflow-credentials", "mlcd-model-signing"}

# What KubernetesPodOperator (provider cncf.kubernetes 10.x, deferrable, get_logs, log_events_on_failure,
# on_finish_action=delete_succeeded_pod, the result read from the pod log) does in the training namespace, and
# no more: no pods/exec (an XCom sidecar read), which would open every running pod and its mounted Secrets.
KPO_RULES = {
    ("", "pods"): {"create", "get", "list", "watch", "patch", "delete"},
    ("", "pods/log"): {"get"},
    ("", "events"): {"list", "watch"},
}
# Volume types the `restricted` Pod Security level allows.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    """What in a pod spec (camelCase, as applied) the `restricted` Pod Security Standard (v1.30+) refuses."""
    bad = []
    pod_sc = spec.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            bad.append(flag)
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            bad.append(f"volume {volume['name']}: {sorted(kinds)}")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        bad.append(f"pod seccomp {pod_seccomp}")
    if pod_sc.get("runAsUser") == 0:
        bad.append("pod runAsUser 0")
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        sc = c.get("securityContext") or {}
        name = c.get("name")
        if sc.get("privileged"):
            bad.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{name}: allowPrivilegeEscalation not false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            bad.append(f"{name}: capabilities not dropped")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            bad.append(f"{name}: adds capabilities")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            bad.append(f"{name}: runAsNonRoot not true")
        if sc.get("runAsUser") == 0:
            bad.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{name}: no seccomp profile")
        if any(p.get("hostPort") for p in c.get("ports") or []):
            bad.append(f"{name}: hostPort")
    return bad
HTTP_VERB = {"GET": "get", "PATCH": "patch", "POST": "create", "PUT": "update", "DELETE": "delete"}


def _documents() -> list[tuple[str, int, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.rglob("*.y*ml")):
        rel = path.relative_to(K8S)
        if rel.name == "kustomization.yaml" or rel.parts[0] == "overlays":
            continue  # kustomize's own files and partial patches: rendered and validated in test_kustomize.py
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                docs.append((path.relative_to(K8S).as_posix(), index, doc))
    return docs


DOCUMENTS = _documents()
MANIFESTS = [(f, i, d) for f, i, d in DOCUMENTS if f not in HELM_VALUES]


def _id(item: tuple[str, int, dict[str, Any]]) -> str:
    file, index, doc = item
    return f"{file}#{index}:{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def _is_builtin(doc: dict[str, Any]) -> bool:
    group = doc["apiVersion"].rpartition("/")[0]
    if "." not in group:  # core ("v1") and apps, batch, policy, autoscaling
        return True
    return group.endswith(".k8s.io") and not group.startswith("gateway.networking.")


def _by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for _, _, d in MANIFESTS if d["kind"] == kind]


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _by_kind(kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _rules(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


# --- CRD structural checks ----------------------------------------------------------------------------------

def _check_httproute(doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert doc["metadata"]["name"] and doc["metadata"]["namespace"]
    spec = doc["spec"]
    assert spec["parentRefs"]
    assert all(isinstance(p.get("name"), str) and p["name"] for p in spec["parentRefs"])
    assert spec["rules"], "an HTTPRoute without rules routes nothing"
    for rule in spec["rules"]:
        refs = rule["backendRefs"]
        assert refs
        for ref in refs:
            assert isinstance(ref["name"], str) and ref["name"]
            assert isinstance(ref["port"], int) and 1 <= ref["port"] <= 65535
            assert isinstance(ref.get("weight", 1), int) and 0 <= ref.get("weight", 1) <= 1_000_000


def _check_inferenceservice(doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] in ("serving.kserve.io/v1beta1",)
    assert doc["metadata"]["name"]
    predictor = doc["spec"]["predictor"]
    assert isinstance(predictor, dict) and predictor
    if "canaryTrafficPercent" in predictor:
        percent = predictor["canaryTrafficPercent"]
        assert isinstance(percent, int) and 0 <= percent <= 100


CRD_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "HTTPRoute": _check_httproute,
    "InferenceService": _check_inferenceservice,
}


# --- every document -----------------------------------------------------------------------------------------

def test_the_expected_files_are_there() -> None:
    files = {f for f, _, _ in DOCUMENTS}
    assert {"namespace.yaml", "rbac.yaml", "trainer-pod-template.yaml", "httproute.yaml"} <= files
    assert (K8S / "README.md").is_file()


@pytest.mark.parametrize("item", MANIFESTS, ids=_id)
def test_manifest_is_valid(item: tuple[str, int, dict[str, Any]]) -> None:
    file, _, doc = item
    assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{file}: not a Kubernetes manifest"
    if doc["kind"] in CRD_CHECKS:
        CRD_CHECKS[doc["kind"]](doc)
        return
    assert _is_builtin(doc), f"{file}: {doc['apiVersion']}/{doc['kind']} is a CRD with no check in this test"
    for version in VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def test_schema_check_has_teeth() -> None:
    role = copy.deepcopy(_one("Role", "mlcd-pod-launcher"))
    role["rules"][0]["verb"] = role["rules"][0].pop("verbs")  # misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(role, VERSIONS[0], strict=True)
    binding = copy.deepcopy(_one("RoleBinding", "mlcd-pod-launcher"))
    del binding["roleRef"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(binding, VERSIONS[-1], strict=True)
    route = copy.deepcopy(_one("HTTPRoute", "mlcd-gateway"))
    route["spec"]["rules"][0]["backendRefs"][0]["port"] = "8000"
    with pytest.raises(AssertionError):
        _check_httproute(route)


def test_namespaced_objects_live_in_declared_namespaces() -> None:
    declared = {d["metadata"]["name"] for d in _by_kind("Namespace")}
    assert {WORKLOAD_NS, TRAINING_NS, AIRFLOW_SA[0]} <= declared
    for file, _, doc in MANIFESTS:
        if doc["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in doc["metadata"], file
        else:
            namespace = doc["metadata"].get("namespace")
            assert namespace in declared, f"{file}: {doc['kind']} in undeclared namespace {namespace}"


# --- RBAC ---------------------------------------------------------------------------------------------------

def test_pod_launcher_role_grants_exactly_what_the_pod_operator_needs() -> None:
    role = _one("Role", "mlcd-pod-launcher")
    assert role["metadata"]["namespace"] == TRAINING_NS
    assert _rules(role) == KPO_RULES
    assert not any(rule.get("resourceNames") for rule in role["rules"]), "pod names are generated per run"


def test_rollout_role_grants_exactly_the_router_calls() -> None:
    """The verbs come from the calls the real router makes, recorded, not from a second hand-written list."""
    from mlcd.rollout.router import KubernetesHTTPRouteRouter
    from tests.kubefake import RolledOut

    calls: list[tuple[str, str]] = []
    cluster = RolledOut()

    def api(method: str, path: str, body: Any, content_type: str | None) -> dict[str, Any]:
        calls.append((method, path))
        if cluster.handles(path):
            return cluster(method, path, body)
        return copy.deepcopy(_one("HTTPRoute", "mlcd-gateway"))

    router = KubernetesHTTPRouteRouter(api)
    router.get_routes()
    router.set_routes("1", "2", 5)
    router.set_routes("2", None, 0, holdback="1", holdback_weight=5)  # promotion with the previous champion held
    router.set_routes("2", None, 0)
    needed: dict[tuple[str, str], set[str]] = {}
    names: dict[tuple[str, str], set[str]] = {}
    for method, path in calls:
        parts = path.strip("/").split("/")
        if parts[0] == "api":  # api/v1/namespaces/<ns>/<resource>/<name>[/<subresource>/...]: the core group
            parts = ["apis", "", *parts[1:]]
        # apis/<group>/<version>/namespaces/<ns>/<resource>/<name>[/<subresource>/<path on the pod>...]
        assert parts[0] == "apis" and parts[3] == "namespaces" and parts[4] == WORKLOAD_NS, path
        key = (parts[1], parts[5] if len(parts) <= 7 else f"{parts[5]}/{parts[7]}")
        needed.setdefault(key, set()).add(HTTP_VERB[method])
        names.setdefault(key, set()).add(parts[6])

    role = _one("Role", "mlcd-rollout")
    assert role["metadata"]["namespace"] == WORKLOAD_NS
    assert _rules(role) == needed
    granted_names = {(g, r): set(rule["resourceNames"])
                     for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted_names == names
    # ... and those names are the objects the manifests create.
    routes = {d["metadata"]["name"] for d in _by_kind("HTTPRoute")}
    assert names[("gateway.networking.k8s.io", "httproutes")] == routes
    assert names[("apps", "deployments")] == {d["metadata"]["name"] for d in _by_kind("Deployment")}
    # The pods are asked through their Services' port (the proxy's resource name is `<service>:<port>`).
    assert names[("", "services/proxy")] == {
        f"{d['metadata']['name']}:{d['spec']['ports'][0]['port']}" for d in _by_kind("Service")}


def test_no_wildcards_and_no_cluster_wide_grants() -> None:
    assert not _by_kind("ClusterRole") and not _by_kind("ClusterRoleBinding")
    for role in _by_kind("Role"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(field, []), f"{role['metadata']['name']}: wildcard in {field}"
            assert not {"secrets", "roles", "rolebindings"} & set(rule.get("resources", []))


def test_bindings_point_at_existing_roles_and_service_accounts() -> None:
    accounts = {(sa["metadata"]["namespace"], sa["metadata"]["name"]) for sa in _by_kind("ServiceAccount")}
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in _by_kind("Role")}
    bound = {}
    for binding in _by_kind("RoleBinding"):
        ns = binding["metadata"]["namespace"]
        ref = binding["roleRef"]
        assert ref["apiGroup"] == "rbac.authorization.k8s.io" and ref["kind"] == "Role"
        assert (ns, ref["name"]) in roles, f"{binding['metadata']['name']}: no Role {ref['name']} in {ns}"
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount"
            assert (subject["namespace"], subject["name"]) in accounts
            bound.setdefault((subject["namespace"], subject["name"]), set()).add(ref["name"])
    assert bound == {AIRFLOW_SA: {"mlcd-pod-launcher", "mlcd-rollout"}}


def test_trainer_pod_runs_as_its_own_tokenless_account() -> None:
    template = yaml.safe_load((K8S / "trainer-pod-template.yaml").read_text())
    pod_sa = (template["metadata"]["namespace"], template["spec"]["serviceAccountName"])
    assert pod_sa == TRAINER_SA
    account = next(sa for sa in _by_kind("ServiceAccount")
                   if (sa["metadata"]["namespace"], sa["metadata"]["name"]) == TRAINER_SA)
    assert account.get("automountServiceAccountToken") is False
    assert template["metadata"]["namespace"] == _one("Role", "mlcd-pod-launcher")["metadata"]["namespace"]


# --- Helm values --------------------------------------------------------------------------------------------

def test_helm_values_use_the_rbac_names_and_no_inline_secrets() -> None:
    values = yaml.safe_load((K8S / "airflow-values.yaml").read_text())
    assert values["executor"] == "LocalExecutor"
    assert values["airflowVersion"].startswith("3.")
    assert values["allowPodLaunching"] is False  # our Role in `mlcd-training` replaces the chart's own
    for component in ("scheduler", "triggerer", "workers"):
        account = values[component]["serviceAccount"]
        assert account == {"create": False, "name": AIRFLOW_SA[1]}, component
    env = {e["name"]: e["value"] for e in values["env"]}
    assert env["MLCD_TRAINING_BACKEND"] == "kubernetes"
    assert env["MLCD_TRAINER_NAMESPACE"] == TRAINING_NS and env["MLCD_K8S_NAMESPACE"] == WORKLOAD_NS
    assert env["MLCD_TRAINER_SERVICE_ACCOUNT"] == TRAINER_SA[1]
    mount = next(m for m in values["volumeMounts"] if m["name"] == "trainer-pod-template")
    assert env["MLCD_TRAINER_POD_TEMPLATE"] == f"{mount['mountPath']}/trainer-pod-template.yaml"
    # Secrets by Secret name only: no key material in the values file.
    for key in ("fernetKey", "apiSecretKey", "jwtSecret", "webserverSecretKey"):
        assert not values.get(key), key
    assert "metadataConnection" not in values.get("data", {})
    assert values["postgresql"]["enabled"] is False


# --- least privilege (issue 16) -----------------------------------------------------------------------------

def test_training_pods_have_a_namespace_of_their_own_with_only_the_trainers_secrets() -> None:
    """Creating a pod in a namespace is reading its Secrets: Airflow creates pods only where the trainer's live."""
    launcher = _one("Role", "mlcd-pod-launcher")
    assert launcher["metadata"]["namespace"] == TRAINING_NS != WORKLOAD_NS
    template = yaml.safe_load((K8S / "trainer-pod-template.yaml").read_text())
    assert template["metadata"]["namespace"] == TRAINING_NS
    referenced = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for c in template["spec"]["containers"] for e in c.get("env") or [] if "secretKeyRef" in e.get("valueFrom", {})
    } | {v["secret"]["secretName"] for v in template["spec"].get("volumes") or [] if "secret" in v}
    assert referenced <= TRAINER_SECRETS
    # Serving's Secrets (the gateway admin token) are referenced only in `mlcd`, where Airflow creates no pods.
    for deployment in _by_kind("Deployment"):
        assert deployment["metadata"]["namespace"] == WORKLOAD_NS


def test_airflow_may_not_exec_into_pods_nor_read_secrets_anywhere() -> None:
    for binding in _by_kind("RoleBinding"):
        if not any((s["namespace"], s["name"]) == AIRFLOW_SA for s in binding["subjects"]):
            continue
        role = _one("Role", binding["roleRef"]["name"])
        rules = _rules(role)
        for forbidden in ("pods/exec", "pods/attach", "pods/portforward", "secrets", "serviceaccounts/token"):
            assert ("", forbidden) not in rules, f"{role['metadata']['name']} grants {forbidden}"
        if ("", "pods") in rules and "create" in rules[("", "pods")]:
            assert role["metadata"]["namespace"] == TRAINING_NS


def test_namespaces_enforce_restricted_pod_security_where_mlcd_runs_pods() -> None:
    levels = {d["metadata"]["name"]: d["metadata"]["labels"] for d in _by_kind("Namespace")}
    for ns in (WORKLOAD_NS, TRAINING_NS):
        assert levels[ns]["pod-security.kubernetes.io/enforce"] == "restricted", ns
    assert levels[AIRFLOW_SA[0]]["pod-security.kubernetes.io/enforce"] == "baseline"
    assert levels[AIRFLOW_SA[0]]["pod-security.kubernetes.io/audit"] == "restricted"


def _pod_specs() -> list[tuple[str, dict[str, Any]]]:
    specs = [(f"Deployment/{d['metadata']['name']}", d["spec"]["template"]["spec"]) for d in _by_kind("Deployment")]
    template = yaml.safe_load((K8S / "trainer-pod-template.yaml").read_text())
    return [*specs, ("trainer-pod-template", template["spec"])]


@pytest.mark.parametrize(("name", "spec"), _pod_specs(), ids=[n for n, _ in _pod_specs()])
def test_every_pod_meets_the_restricted_level(name: str, spec: dict[str, Any]) -> None:
    assert restricted_violations(spec) == [], name
    for c in spec["containers"]:
        assert c["securityContext"]["readOnlyRootFilesystem"] is True, name
        limits = c["resources"]["limits"]
        assert {"cpu", "memory"} <= set(limits), f"{name}: a container without CPU and memory limits"


def test_the_restricted_check_has_teeth() -> None:
    spec = copy.deepcopy(_pod_specs()[-1][1])
    assert restricted_violations(spec) == []
    del spec["securityContext"]["seccompProfile"]
    for c in spec["containers"]:
        c["securityContext"].pop("seccompProfile", None)
    spec["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    spec["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    found = restricted_violations(spec)
    assert any("seccomp" in f for f in found) and any("hostPath" in f for f in found)
    assert any("allowPrivilegeEscalation" in f for f in found)


def test_helm_values_create_no_default_login() -> None:
    """The chart's create-user Job would make admin/admin: it is off, and no password is in the values."""
    values = yaml.safe_load((K8S / "airflow-values.yaml").read_text())
    assert values["webserver"]["defaultUser"]["enabled"] is False
    assert values["createUserJob"]["enabled"] is False
    text = (K8S / "airflow-values.yaml").read_text().lower()
    assert "password:" not in text and "admin/admin" not in text.replace(" ", "")


# --- metrics and exposure (issue 11.4) ----------------------------------------------------------------------

def _route_matches(matches: list[dict[str, Any]], path: str, method: str) -> bool:
    """Gateway API HTTPRoute matching (Exact; PathPrefix by whole path elements; optional method)."""
    for match in matches:
        kind, value = match["path"]["type"], match["path"]["value"]
        if kind == "Exact":
            hit = path == value
        elif kind == "PathPrefix":
            prefix = value.rstrip("/")
            hit = path == prefix or path.startswith(prefix + "/")
        else:
            raise AssertionError(f"unchecked match type {kind}")
        if hit and match.get("method", method) == method:
            return True
    return False


def test_the_public_route_sends_only_inference_paths_and_the_router_keeps_it_so() -> None:
    from mlcd.rollout.router import FEEDBACK_MATCHES, PUBLIC_MATCHES, KubernetesHTTPRouteRouter

    route = _one("HTTPRoute", "mlcd-gateway")
    assert len(route["spec"]["rules"]) == 2
    matches = route["spec"]["rules"][0]["matches"]
    public = [("POST", "/predict"), ("POST", "/v2/models/mnist-cnn/infer"), ("GET", "/v2/health/ready"),
              ("GET", "/v2"), ("GET", "/v2/models/mnist-cnn"), ("POST", "/v2/models/m/versions/3/infer")]
    internal = [("GET", "/admin/routes"), ("POST", "/admin/routes"), ("GET", "/metrics"), ("POST", "/feedback"),
                ("GET", "/healthz"), ("GET", "/predict"), ("POST", "/predictx"), ("GET", "/v2x/models"),
                ("GET", "/")]
    assert all(_route_matches(matches, p, m) for m, p in public)
    assert not any(_route_matches(matches, p, m) for m, p in internal)
    # A weight change is a JSON merge patch replacing the rules whole: it must carry the same matches.
    patch = KubernetesHTTPRouteRouter(lambda *a: {}).route_patch("1", "2", 25)
    assert patch["spec"]["rules"][0]["matches"] == matches == [dict(m) for m in PUBLIC_MATCHES]
    # The second rule takes labels only: POST /feedback carrying a bearer token (the gateway checks which).
    feedback = route["spec"]["rules"][1]
    assert patch["spec"]["rules"][1]["matches"] == feedback["matches"] == [dict(m) for m in FEEDBACK_MATCHES]
    assert [m["path"] for m in feedback["matches"]] == [{"type": "Exact", "value": "/feedback"}]
    assert all(m["method"] == "POST" and m["headers"] == [
        {"type": "RegularExpression", "name": "Authorization", "value": "^Bearer .+"}] for m in feedback["matches"])


def test_the_gateways_accept_connections_only_from_airflow_prometheus_and_the_data_plane() -> None:
    policy = _one("NetworkPolicy", "mlcd-gateway")
    assert policy["metadata"]["namespace"] == WORKLOAD_NS
    selector = policy["spec"]["podSelector"]["matchLabels"]
    deployments = _by_kind("Deployment")
    assert deployments and all(
        all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in selector.items()) for d in deployments)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    [rule] = policy["spec"]["ingress"]
    ports = {c["containerPort"] for d in deployments for c in d["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {p["port"] for p in rule["ports"]} == ports
    peers = rule["from"]
    namespaces = [p["namespaceSelector"]["matchLabels"] for p in peers]
    assert namespaces == [{"kubernetes.io/metadata.name": AIRFLOW_SA[0]},
                          {"kubernetes.io/metadata.name": "monitoring"}, {"mlcd.io/gateway-dataplane": "true"}]
    airflow = peers[0]["podSelector"]["matchExpressions"][0]
    assert (airflow["key"], set(airflow["values"])) == ("component", {"scheduler", "worker", "triggerer"})
    assert peers[1]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    assert all("ipBlock" not in p for p in peers)  # no CIDR opens the door to anything else


def test_prometheus_labels_each_gateway_pod_with_the_variant_and_version_the_router_sets() -> None:
    from mlcd.rollout.router import VERSION_ANNOTATION

    config = yaml.safe_load(_one("ConfigMap", "mlcd-prometheus-scrape")["data"]["mlcd-gateways.yaml"])
    [job] = config["scrape_configs"]
    assert job["honor_labels"] is True  # the gateway's own variant/version labels win
    targets = {r["target_label"]: r["source_labels"][0] for r in job["relabel_configs"] if "target_label" in r}

    def meta(kind: str, name: str) -> str:
        return f"__meta_kubernetes_pod_{kind}_" + "".join(ch if ch.isalnum() else "_" for ch in name)

    assert targets["variant"] == meta("label", "mlcd.io/variant")
    assert targets["version"] == meta("annotation", VERSION_ANNOTATION)
    for deployment in _by_kind("Deployment"):
        template = deployment["spec"]["template"]["metadata"]
        assert template["labels"]["mlcd.io/variant"] in ("stable", "canary", "holdback")
        assert VERSION_ANNOTATION in template["annotations"]


def test_airflow_reads_metrics_from_prometheus_and_the_gateway_on_its_internal_service() -> None:
    from mlcd.rollout.providers import check_selector

    values = yaml.safe_load((K8S / "airflow-values.yaml").read_text())
    env = {e["name"]: e["value"] for e in values["env"]}
    assert env["MLCD_METRICS_PROVIDER"] == "prometheus" and env["MLCD_ROUTER_BACKEND"] == "kubernetes"
    assert env["MLCD_PROMETHEUS_URL"].startswith("http://prometheus.monitoring.svc")
    assert check_selector(env["MLCD_PROMETHEUS_SELECTOR"]) == f'namespace="{WORKLOAD_NS}"'
    host = env["MLCD_GATEWAY_URL"].split("//")[1].split(":")[0]
    service, namespace = host.split(".")[:2]
    assert namespace == WORKLOAD_NS and service in {s["metadata"]["name"] for s in _by_kind("Service")}
    assert all(s["spec"]["type"] == "ClusterIP" for s in _by_kind("Service"))  # no Service is public
    assert env["MLCD_STORAGE_URL"].startswith("s3://")
    secrets = {s["envName"] for s in values["secret"]}
    assert "MLCD_LEDGER_URL" in secrets  # the ledger's Postgres URL, from a Secret


def test_no_pod_shares_a_disk_and_every_part_names_the_same_object_store() -> None:
    """Issue 11: tasks, the trainer pod and the gateways meet through services (storage URL, ledger, MLflow)."""
    values = yaml.safe_load((K8S / "airflow-values.yaml").read_text())
    template = yaml.safe_load((K8S / "trainer-pod-template.yaml").read_text())
    pod_volumes = [v for _, spec in _pod_specs() for v in spec.get("volumes") or []]
    for volume in [*pod_volumes, *values["volumes"]]:
        assert "persistentVolumeClaim" not in volume, f"shared disk {volume['name']}"
    assert not _by_kind("PersistentVolumeClaim")
    storage = {e["value"] for e in values["env"] if e["name"] == "MLCD_STORAGE_URL"}
    for deployment in _by_kind("Deployment"):
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert {env["MLCD_STORAGE_URL"]} == storage, deployment["metadata"]["name"]
        assert {"secretRef": {"name": "mlcd-storage", "optional": True}} in container["envFrom"]
    assert "mlcd-storage" in values["extraEnvFrom"]
    assert "MLCD_HOME" not in {e["name"] for c in template["spec"]["containers"] for e in c.get("env") or []}
