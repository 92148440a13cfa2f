"""Gateway configuration: limits, where state persists, which registry and model; no heavy imports."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mlcd.serving.evidence import LOOPBACK, ShareBound, parse_networks
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
        ledger_url: the shared SQL database where labelled prediction ids are recorded (``MLCD_LEDGER_URL``), so
            any replica takes a label once; None: the default ledger under ``MLCD_HOME``.
        feedback_ttl_s: how long a prediction id can be labelled (``MLCD_FEEDBACK_TTL_S``, default a week).
        expose_variant: answers say which version and variant served them (``MLCD_EXPOSE_VARIANT``; false
            hides ``version``/``variant``/``fallback`` from ``/predict`` and the V2 answers, so a client cannot
            single out the canary); it also hides the served versions from ``/healthz`` and V2 metadata.
        evidence_max_share: the most one client (address) may carry of a window's canary evidence and of the
            drift window (``MLCD_EVIDENCE_MAX_SHARE``); beyond it the client is served, not counted.
        evidence_floor: images per window any client may always contribute (``MLCD_EVIDENCE_FLOOR``).
        evidence_window_s: that window, in seconds (``MLCD_EVIDENCE_WINDOW_S``).
        evidence_exempt: CIDRs whose clients are not bounded (``MLCD_EVIDENCE_EXEMPT``, comma-separated;
            default loopback: the platform's own traffic on this host; ``none`` bounds every client).
        trusted_proxies: CIDRs of proxies whose ``X-Forwarded-For`` names the client (``MLCD_TRUSTED_PROXIES``).
        metrics_token: bearer token ``/metrics`` requires (``MLCD_METRICS_TOKEN``; the admin token is accepted
            too); ``None`` leaves ``/metrics`` open (an internal endpoint: keep it off public routes).
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
    ledger_url: str | None = None
    feedback_ttl_s: float = 7 * 24 * 3600.0
    evidence_max_share: float = 0.1
    evidence_floor: int = 64
    evidence_window_s: float = 60.0
    evidence_exempt: tuple[str, ...] = LOOPBACK
    trusted_proxies: tuple[str, ...] = ()
    metrics_token: str | None = None

    def share_bound(self) -> ShareBound:
        """A fresh per-client bound as configured (one for evidence, one for the drift window)."""
        return ShareBound(self.evidence_window_s, self.evidence_max_share, self.evidence_floor,
                          parse_networks(self.evidence_exempt))

    def __post_init__(self) -> None:
        # Prometheus sums each variant's pods by this label: a typo would hide a canary from the analysis.
        if self.pinned_variant not in ("stable", "canary", "holdback"):  # holdback: the previous champion's pods
            raise ValueError(f"MLCD_SERVE_VARIANT must be stable, canary or holdback, got {self.pinned_variant!r}")
        parse_networks(self.evidence_exempt + self.trusted_proxies)  # a typo fails at start, naming it
        self.share_bound()

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
            "ledger_url": s.ledger_url,
            "feedback_ttl_s": float(os.environ.get("MLCD_FEEDBACK_TTL_S") or 7 * 24 * 3600.0),
            "expose_variant": (os.environ.get("MLCD_EXPOSE_VARIANT") or "true").strip().lower()
            not in ("off", "0", "false", "no"),
            "metrics_token": os.environ.get("MLCD_METRICS_TOKEN") or None,
            **_evidence_env(),
        }
        base.update(overrides)
        return cls(**base)  # type: ignore[arg-type]


def _evidence_env() -> dict[str, object]:
    """The evidence bounds from ``MLCD_EVIDENCE_*`` / ``MLCD_TRUSTED_PROXIES``; unset keeps the defaults."""
    out: dict[str, object] = {}
    for key, env, kind in (("evidence_max_share", "MLCD_EVIDENCE_MAX_SHARE", float),
                           ("evidence_floor", "MLCD_EVIDENCE_FLOOR", int),
                           ("evidence_window_s", "MLCD_EVIDENCE_WINDOW_S", float)):
        raw = (os.environ.get(env) or "").strip()
        if raw:
            try:
                out[key] = kind(raw)
            except ValueError:
                raise ValueError(f"{env} must be a number, got {raw!r}") from None
    for key, env in (("evidence_exempt", "MLCD_EVIDENCE_EXEMPT"), ("trusted_proxies", "MLCD_TRUSTED_PROXIES")):
        listed = (os.environ.get(env) or "").strip()
        if listed:
            out[key] = () if listed.lower() == "none" else tuple(v.strip() for v in listed.split(",") if v.strip())
    return out
