"""Gateway configuration: limits, where state persists, which registry and model; no heavy imports."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mlcd.settings import get_settings


@dataclass(frozen=True)
class GatewayConfig:
    """Everything one gateway process needs.

    Args:
        model_name: registered model whose ``champion`` / ``canary`` aliases are served.
        tracking_uri: MLflow tracking / registry server.
        admin_token: bearer token for ``/admin/*``; ``None`` refuses every admin call.
        state_path: JSON file with the served versions and weight, so a restart resumes the same routes.
        max_body_bytes: larger request bodies are refused with 413 before they are parsed.
        max_batch_images: images per ``/predict`` call at most (413 above).
        batch_max_rows: rows per coalesced model call (micro-batching).
        batch_max_wait_s: how long a busy batch may wait for company.
        feedback_capacity: predictions remembered for ``/feedback`` (oldest forgotten first).
        pinned_version: serve only this version (a Kubernetes Deployment per variant; aliases ignored).
        pinned_variant: the variant label a pinned gateway reports in its metrics.
        drift: score ``/predict`` images for input drift and export it on ``/metrics``
            (``MLCD_DRIFT=off`` disables it; off by default for gateways built in code).
        feedback_token: bearer token of ``/feedback`` (``MLCD_FEEDBACK_TOKEN``), separate from the admin token;
            ``None`` refuses every label (labels steer the guard, so nobody may send them unasked).
        gateway_secret: HMAC key that signs prediction ids (``MLCD_GATEWAY_SECRET``; every replica behind one
            route needs the same); ``None``: a random key per process (ids die with the process anyway).
        expose_variant: answers say which version and variant served them (``MLCD_EXPOSE_VARIANT``; false
            hides ``version``/``variant``/``fallback`` from ``/predict`` and the V2 answers, so a client cannot
            single out the canary).
    """

    model_name: str
    tracking_uri: str
    admin_token: str | None
    state_path: Path
    max_body_bytes: int = 2 * 1024 * 1024
    max_batch_images: int = 256
    batch_max_rows: int = 64
    batch_max_wait_s: float = 0.002
    feedback_capacity: int = 200_000
    pinned_version: str | None = None
    pinned_variant: str = "stable"
    drift: bool = False
    feedback_token: str | None = None
    gateway_secret: str | None = None
    expose_variant: bool = True

    def __post_init__(self) -> None:
        # Prometheus sums each variant's pods by this label: a typo would hide a canary from the analysis.
        if self.pinned_variant not in ("stable", "canary", "holdback"):  # holdback: the previous champion's pods
            raise ValueError(f"MLCD_SERVE_VARIANT must be stable, canary or holdback, got {self.pinned_variant!r}")

    @classmethod
    def from_settings(cls, **overrides: object) -> GatewayConfig:
        """Read ``MLCD_*`` now; ``MLCD_SERVE_VERSION`` / ``MLCD_SERVE_VARIANT`` pin a Kubernetes replica."""
        s = get_settings()
        base: dict[str, object] = {
            "model_name": s.model_name,
            "tracking_uri": s.tracking_uri,
            "admin_token": s.admin_token,
            "state_path": s.home / "gateway" / "state.json",
            "pinned_version": os.environ.get("MLCD_SERVE_VERSION") or None,
            "pinned_variant": os.environ.get("MLCD_SERVE_VARIANT") or "stable",
            "drift": (os.environ.get("MLCD_DRIFT") or "on").strip().lower() not in ("off", "0", "false", "no"),
            "feedback_token": os.environ.get("MLCD_FEEDBACK_TOKEN") or None,
            "gateway_secret": os.environ.get("MLCD_GATEWAY_SECRET") or None,
            "expose_variant": (os.environ.get("MLCD_EXPOSE_VARIANT") or "true").strip().lower()
            not in ("off", "0", "false", "no"),
        }
        base.update(overrides)
        return cls(**base)  # type: ignore[arg-type]
