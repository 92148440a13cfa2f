"""The kustomize base (deploy/k8s) and every overlay, rendered and validated against the official schemas offline.

No ``kustomize``/``kubectl`` binary can be installed here (neither Debian nor PyPI ships one), so this renders the
subset of kustomize the files use, as ``kubectl kustomize`` does: ``resources`` (files, and directories holding a
kustomization), ``patches`` with a ``path`` (a strategic merge patch naming its target by kind/name/namespace; a
``$patch: delete`` removes the object) and ``images`` (newName/newTag). A field the renderer does not know fails
the test, so a new kustomize feature cannot slip in unrendered.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

pytestmark = pytest.mark.unit

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
KNOWN = {"apiVersion", "kind", "resources", "patches", "images"}
MERGE_BY_NAME = {"containers", "initContainers", "env", "ports", "volumeMounts", "volumes"}
CRDS = {"HTTPRoute", "PrometheusRule", "PodMonitor", "ServiceMonitor"}


def _key(doc: dict[str, Any]) -> tuple[str, str, str]:
    meta = doc.get("metadata") or {}
    return doc["kind"], meta.get("namespace", ""), meta["name"]


def strategic_merge(target: Any, patch: Any, key: str = "") -> Any:
    if isinstance(patch, list) and key in MERGE_BY_NAME and isinstance(target, list):
        out = copy.deepcopy(target)
        for item in patch:
            at = next((i for i, old in enumerate(out) if old.get("name") == item.get("name")), None)
            if at is None:
                out.append(copy.deepcopy(item))
            else:
                out[at] = strategic_merge(out[at], item)
        return out
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = strategic_merge(out.get(k), v, k)
    return out


def render(root: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize root`` for the features listed in the module docstring."""
    spec = yaml.safe_load((root / "kustomization.yaml").read_text())
    assert set(spec) <= KNOWN, f"{root}: kustomize fields this renderer does not do: {set(spec) - KNOWN}"
    assert spec["kind"] == "Kustomization" and spec["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    docs: dict[tuple[str, str, str], dict[str, Any]] = {}
    for entry in spec.get("resources") or []:
        path = (root / entry).resolve()
        found = render(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
        for doc in found:
            assert _key(doc) not in docs, f"{root}: {_key(doc)} defined twice"
            docs[_key(doc)] = doc
    for patch_entry in spec.get("patches") or []:
        assert set(patch_entry) == {"path"}, f"{root}: only path patches are rendered here: {patch_entry}"
        patch = yaml.safe_load((root / patch_entry["path"]).read_text())
        key = _key(patch)
        assert key in docs, f"{root}: patch {patch_entry['path']} targets {key}, which the resources lack"
        if patch.get("$patch") == "delete":
            del docs[key]
        else:
            docs[key] = strategic_merge(docs[key], patch)
    for image in spec.get("images") or []:
        for doc in docs.values():
            for container in _containers(doc):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    return list(docs.values())


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] != "Deployment":
        return []
    return list(doc["spec"]["template"]["spec"]["containers"])


def _validate(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        if doc["kind"] in CRDS:
            assert doc["apiVersion"].endswith(("/v1", "/v1beta1")) and doc["metadata"]["name"], doc
            continue
        kubernetes_validate.validate(doc, "1.37.0", strict=True)


def test_the_base_renders_to_valid_manifests() -> None:
    docs = render(K8S)
    _validate(docs)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "PodDisruptionBudget", "HTTPRoute", "NetworkPolicy", "Role"} <= kinds
    # Not in the base: the pod template (applying it would start a GPU pod) and the Helm values.
    assert not any(d["kind"] == "Pod" for d in docs)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_every_overlay_renders_to_valid_manifests(overlay: Path) -> None:
    _validate(render(overlay))


def test_the_production_overlay_scales_stable_and_keeps_the_probes() -> None:
    docs = {(_key(d)[0], _key(d)[2]): d for d in render(K8S / "overlays" / "production")}
    stable = docs[("Deployment", "mlcd-gateway-stable")]
    assert stable["spec"]["replicas"] == 3
    [gateway] = stable["spec"]["template"]["spec"]["containers"]
    assert gateway["image"] == "registry.example.com/mlcd/gateway:0.1.0"
    assert gateway["resources"]["requests"] == {"cpu": "1", "memory": "2Gi"}
    # The strategic merge kept what the patch did not name (probes, env, the limits' sibling fields).
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert any(e["name"] == "MLCD_GATEWAY_SECRET" for e in gateway["env"])


def test_the_single_node_overlay_drops_the_budget_that_would_block_every_drain() -> None:
    docs = {(_key(d)[0], _key(d)[2]) for d in render(K8S / "overlays" / "single-node")}
    assert ("PodDisruptionBudget", "mlcd-gateway-stable") not in docs
    assert ("Deployment", "mlcd-gateway-stable") in docs


def test_the_renderer_has_teeth(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [str(K8S / "gateway-service-stable.yaml")], "patches": [{"path": "bad.yaml"}]}))
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "mlcd-gateway-stable", "namespace": "mlcd"},
        "spec": {"ports": [{"name": "http", "port": "eighty"}]}}))
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(render(tmp_path))
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namePrefix": "x-"}))
    with pytest.raises(AssertionError, match="namePrefix"):
        render(tmp_path)
