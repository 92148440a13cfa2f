"""Answers for the Deployment and Service-proxy calls of the HTTPRoute router, for unit tests' recording APIs.

The router waits for a pinned Deployment's rollout (``GET`` of the Deployment, then the pods' V2 readiness
through the Service proxy). :class:`RolledOut` remembers what each Deployment was pinned to and answers as a
cluster whose rollouts finish at once: the status a finished rollout has, and ``{"ready": true}`` from the pods
for the version pinned, a 404 as the pod would give it for any other. Tests of the waiting itself use the
rehearsal's stand-in (tests/rehearsal/kube.py), where pods turn ready later or never.
"""

from __future__ import annotations

import copy
from typing import Any

from mlcd.rollout.router import VERSION_ANNOTATION, RouterError


class RolledOut:
    def __init__(self) -> None:
        self.pinned: dict[str, str] = {}
        self.generation: dict[str, int] = {}

    def handles(self, path: str) -> bool:
        return "/deployments/" in path or "/proxy/" in path

    def __call__(self, method: str, path: str, body: Any) -> dict[str, Any]:
        if "/deployments/" in path:
            name = path.rsplit("/", 1)[1]
            if method == "PATCH":
                self.pinned[name] = body["spec"]["template"]["metadata"]["annotations"][VERSION_ANNOTATION]
                self.generation[name] = self.generation.get(name, 1) + 1
            return self.deployment(name)
        service = path.split("/services/", 1)[1].split(":", 1)[0]
        version = path.rsplit("/versions/", 1)[1].split("/", 1)[0]
        if self.pinned.get(service) != version:  # the pods answer 404 for a version they do not serve
            raise RouterError(f"kubernetes GET {path}: 404 Not Found")
        return {"name": "mnist-cnn", "version": version, "ready": True}

    def deployment(self, name: str) -> dict[str, Any]:
        gen = self.generation.get(name, 1)
        annotations = {VERSION_ANNOTATION: self.pinned[name]} if name in self.pinned else {}
        return copy.deepcopy({
            "kind": "Deployment", "metadata": {"name": name, "generation": gen},
            "spec": {"replicas": 1, "template": {"metadata": {"annotations": annotations}}},
            "status": {"observedGeneration": gen, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1,
                       "availableReplicas": 1},
        })
