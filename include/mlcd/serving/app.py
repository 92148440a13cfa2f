"""The gateway: champion (stable) and canary side by side behind weighted, optionally sticky routing.

Routes are one immutable object swapped in a single assignment, so a request sees either the old or the new
routes, never a mix; a model taken out of the routes finishes the requests already routed to it. A canary
failure is counted against the canary and the request is answered by the stable model.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import random
import secrets
import signal
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mlcd.serving import fastjson
from mlcd.serving.config import GatewayConfig
from mlcd.serving.driftfeed import DriftFeed
from mlcd.serving.evidence import Unrandomised, sticky_key
from mlcd.serving.evidence import sticky_bucket as _keyed_bucket
from mlcd.serving.feedback import LabelLedger, LabelRefused, PredictionIds, take_label
from mlcd.serving.metrics import GatewayMetrics
from mlcd.serving.models import ModelLoader, ModelSlot, build_slot, mlflow_loader, resolve_alias
from mlcd.serving.opsmetrics import OpsCollector
from mlcd.serving.state import RouteState, load_state, save_state

log = logging.getLogger(__name__)

STABLE, CANARY, HOLDBACK = "stable", "canary", "holdback"
MAX_CLIENT_ID = 256


class RequestError(Exception):
    """A refused request: HTTP status and a one-line reason (``extra``: more fields for the JSON answer)."""

    def __init__(self, status: int, reason: str, extra: dict[str, Any] | None = None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.extra = extra or {}


@dataclass(frozen=True)
class Routes:
    stable: ModelSlot | None = None
    canary: ModelSlot | None = None
    canary_weight: int = 0
    generation: int = 0  # grows by one with every route change; persisted; the compare-and-set token
    # The previous champion on a small share after a promotion: the bake's concurrent control (percent of all).
    holdback: ModelSlot | None = None
    holdback_weight: int = 0

    def describe(self) -> dict[str, Any]:
        return {
            "stable": self.stable.version if self.stable else None,
            "canary": self.canary.version if self.canary else None,
            "canary_weight": self.canary_weight if self.canary else 0,
            "holdback": self.holdback.version if self.holdback else None,
            "holdback_weight": self.holdback_weight if self.holdback else 0,
            "generation": self.generation,
            "warnings": {
                variant: slot.warning
                for variant, slot in ((STABLE, self.stable), (CANARY, self.canary), (HOLDBACK, self.holdback))
                if slot is not None and slot.warning
            },
        }


@dataclass(frozen=True)
class Served:
    """One routed answer: which version and variant answered, its ``N×10`` probabilities, and whether the
    canary failed and the stable model answered instead."""

    version: str
    variant: str
    probs: np.ndarray
    fallback: bool
    unrandomised: Unrandomised | None = None  # why this answer is not canary evidence; None: it is


    @property
    def classes(self) -> np.ndarray:
        return np.asarray(self.probs).argmax(axis=1)


_PROCESS_STICKY_KEY = secrets.token_bytes(32)


def sticky_bucket(client_id: str, key: bytes = _PROCESS_STICKY_KEY) -> int:
    """A stable bucket in 0..9999 for a client (HMAC under ``key``, so a client cannot choose it); a client
    inside the canary's share stays there as it grows."""
    return _keyed_bucket(client_id, key)


def choose_variant(canary_weight: int, client_id: str | None, rng: random.Random,
                   key: bytes = _PROCESS_STICKY_KEY) -> str:
    """``canary`` with probability ``canary_weight``/100, or deterministically per client when sticky."""
    if canary_weight <= 0:
        return STABLE
    if canary_weight >= 100:
        return CANARY
    bucket = sticky_bucket(client_id, key) if client_id is not None else rng.randrange(10_000)
    return CANARY if bucket < canary_weight * 100 else STABLE


def choose_holdback(holdback_weight: int, client_id: str | None, rng: random.Random,
                    key: bytes = _PROCESS_STICKY_KEY) -> bool:
    """Whether a request goes to the holdback (``holdback_weight`` percent of all traffic, taken before the
    canary split); a sticky client hashes under its own salt, so the canary's clients are not the holdback's."""
    if holdback_weight <= 0:
        return False
    bucket = sticky_bucket(f"holdback\x00{client_id}", key) if client_id is not None else rng.randrange(10_000)
    return bucket < holdback_weight * 100


def parse_images(payload: Any, max_batch: int) -> tuple[np.ndarray, str | None]:
    """Validate a ``/predict`` body into float32 ``N×28×28`` in 0–255; raise :class:`RequestError` otherwise."""
    if not isinstance(payload, dict):
        raise RequestError(422, "body must be a JSON object with an 'images' list")
    images = payload.get("images")
    if not isinstance(images, list) or not images:
        raise RequestError(422, "'images' must be a non-empty list of 28x28 images")
    if len(images) > max_batch:
        raise RequestError(413, f"batch of {len(images)} images exceeds the limit of {max_batch}")
    client_id = payload.get("client_id")
    if client_id is not None and (not isinstance(client_id, str) or not 0 < len(client_id) <= MAX_CLIENT_ID):
        raise RequestError(422, f"'client_id' must be a string of 1..{MAX_CLIENT_ID} characters")
    unknown = set(payload) - {"images", "client_id"}
    if unknown:
        raise RequestError(422, f"unknown fields: {', '.join(sorted(map(str, unknown)))}")
    try:
        arr = np.asarray(images)
    except (ValueError, TypeError):
        raise RequestError(422, "each image must be a 28x28 list of lists of numbers (ragged input)") from None
    return check_pixels(arr), client_id


def check_pixels(arr: np.ndarray, status: int = 422) -> np.ndarray:
    """``N×28×28`` finite numbers in 0..255 as float32, or :class:`RequestError` with ``status`` saying why."""
    if arr.ndim != 3 or arr.shape[1:] != (28, 28):
        raise RequestError(status, f"images must have shape Nx28x28, got {'x'.join(map(str, arr.shape))}")
    if arr.dtype.kind not in "iuf":
        raise RequestError(status, f"pixels must be numbers, got {arr.dtype.kind!r} values")
    if len(arr) == 0:
        raise RequestError(status, "no images: the batch dimension is 0")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise RequestError(status, "pixels must be finite numbers (no NaN or Infinity)")
    lo, hi = arr.min(), arr.max()
    if lo < 0 or hi > 255:
        raise RequestError(status, f"pixel values must be in 0..255, got {lo}..{hi}")
    return arr.astype(np.float32, copy=False)


class Gateway:
    """State and behaviour behind the HTTP layer (also usable in-process by tests and benchmarks)."""

    def __init__(self, config: GatewayConfig, loader: ModelLoader | None = None):
        self.config = config
        self.loader = loader or mlflow_loader(config.model_name, config.tracking_uri)
        self.metrics = GatewayMetrics()
        self.routes = Routes()
        self.rng = random.Random()
        self.ready_error: str | None = "starting"
        self._admin_lock = asyncio.Lock()
        # Prediction ids carry what a label needs, signed and encrypted under the replicas' shared secret; the
        # replay check is a row in the shared ledger database, so any replica (or a restarted one) takes a label
        # exactly once (mlcd.serving.feedback). Without a configured secret ids die with this process.
        self.ids = PredictionIds(config.gateway_secret, config.feedback_ttl_s)
        self.labels = LabelLedger(config.ledger_url)
        self._retiring: set[asyncio.Task[None]] = set()
        self.drift: Any = None  # a mlcd.guard.drift.DriftMonitor once started (config.drift)
        self._drift_feed: DriftFeed | None = None
        # Evidence (mlcd.serving.evidence): keyed sticky buckets; per-client bounds on evidence and drift.
        self._sticky_key = sticky_key(config.gateway_secret, _PROCESS_STICKY_KEY)
        self.evidence_bound = config.share_bound()
        self.drift_bound = config.share_bound()

    async def start_drift(self) -> None:
        """Build the drift monitor from the served model's snapshot (or the reference data); never fatal."""
        if not self.config.drift:
            return
        try:
            from mlcd.guard.drift import DriftMonitor
            from mlcd.guard.signals import load_or_fit_reference, snapshot_of
            from mlcd.settings import get_settings

            stable = self.routes.stable.version if self.routes.stable else None
            snapshot = await asyncio.to_thread(snapshot_of, self.config.model_name, self.config.tracking_uri, stable)
            settings = get_settings()
            # The snapshot comes from the storage URL (an object store on a cluster), never a shared disk.
            reference = await asyncio.to_thread(
                load_or_fit_reference, settings.home, snapshot, settings.storage_url)
            self.drift = DriftMonitor(reference)
        except Exception as exc:  # noqa: BLE001 - serving goes on without drift; the log says why
            log.warning("input drift monitoring disabled: %s: %s", type(exc).__name__, exc)

    # -- loading and swapping -------------------------------------------------------------------------
    async def _slot_for(self, version: str | None, current: list[ModelSlot | None]) -> ModelSlot | None:
        if version is None:
            return None
        for slot in current:
            if slot is not None and slot.version == version:
                return slot  # reuse: promotion moves the canary's loaded model to stable without reloading
        return await asyncio.to_thread(
            build_slot, version, self.loader, self.config.batch_max_rows, self.config.batch_max_wait_s
        )

    async def set_routes(
        self,
        stable: str | None,
        canary: str | None,
        canary_weight: int,
        persist: bool = True,
        expected_generation: int | None = None,
        generation: int | None = None,
        holdback: str | None = None,
        holdback_weight: int = 0,
    ) -> Routes:
        """Load what is not loaded yet, persist the new routes, then switch in one assignment.

        Persist first: a failed save answers an error with traffic unchanged (the new slots are dropped), so what
        the gateway serves is always what a restart would serve. With ``expected_generation`` the move applies
        only if the routes are still at that generation (409 otherwise): a stale canary step cannot undo a
        rollback. ``generation`` restores a persisted generation at startup instead of counting up.
        """
        if not 0 <= canary_weight <= 100:
            raise RequestError(422, f"canary_weight must be in 0..100, got {canary_weight}")
        if stable is None and canary is not None:
            raise RequestError(422, "a canary needs a stable version to fall back to")
        if canary is not None and canary == stable:
            canary = None  # the same version twice is just the stable model
        if holdback is not None and (holdback == stable or holdback_weight <= 0):
            holdback, holdback_weight = None, 0  # nothing to hold back: stable serves that share
        if not 0 <= holdback_weight <= 100 or (canary_weight if canary else 0) + holdback_weight > 100:
            raise RequestError(422, f"holdback_weight {holdback_weight} with canary_weight {canary_weight} is not a "
                               "split of 100%")
        async with self._admin_lock:
            old = self.routes
            if expected_generation is not None and expected_generation != old.generation:
                raise RequestError(
                    409,
                    f"routes are at generation {old.generation}, not {expected_generation}: another writer moved "
                    "them; nothing changed",
                    {"conflict": "generation", "expected_generation": expected_generation,
                     "current_generation": old.generation, "routes": old.describe()},
                )
            current = [old.stable, old.canary, old.holdback]
            new_stable = await self._slot_for(stable, current)
            new_canary = await self._slot_for(canary, current)
            new_holdback = await self._slot_for(holdback, current)
            new_gen = old.generation + 1 if generation is None else generation
            routes = Routes(new_stable, new_canary, canary_weight if new_canary else 0, new_gen,
                            new_holdback, holdback_weight if new_holdback else 0)
            if persist and self.config.pinned_version is None:
                try:
                    await asyncio.to_thread(
                        save_state, self.config.state_path,
                        RouteState(stable, canary if new_canary else None, routes.canary_weight, generation=new_gen,
                                   holdback=holdback if new_holdback else None,
                                   holdback_weight=routes.holdback_weight),
                    )
                except Exception as exc:  # noqa: BLE001 - nothing switched; drop what was loaded for it
                    for slot in (new_stable, new_canary, new_holdback):
                        if slot is not None and slot not in current:
                            self._retire(slot)
                    raise RequestError(
                        503, f"could not persist the routes, traffic unchanged: {type(exc).__name__}: {exc}"
                    ) from exc
            self.routes = routes
            for slot in current:
                if slot is not None and slot not in (new_stable, new_canary, new_holdback):
                    self._retire(slot)
            self.ready_error = None if new_stable else "no stable model version configured"
            served: dict[str, str | None] = {STABLE: stable, CANARY: canary if new_canary else None,
                                             HOLDBACK: holdback if new_holdback else None}
            if self.config.pinned_version:  # one Deployment per variant: report the variant this one serves
                served = {self.config.pinned_variant: stable}
            self.metrics.set_served(served, self.routes.canary_weight)
            self.metrics.set_holdback_weight(self.routes.holdback_weight)
            log.info("routes: %s", self.routes.describe())
            return self.routes

    def _retire(self, slot: ModelSlot) -> None:
        task = asyncio.get_running_loop().create_task(slot.retire())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def resolve_aliases(self) -> tuple[str | None, str | None]:
        name, uri = self.config.model_name, self.config.tracking_uri
        return resolve_alias(name, uri, "champion"), resolve_alias(name, uri, "canary")

    async def reload_aliases(self) -> Routes:
        """Serve the registry's ``champion`` and ``canary``; a canary kept from before keeps its weight."""
        champion, canary = await asyncio.to_thread(self.resolve_aliases)
        old = self.routes
        weight = old.canary_weight if old.canary is not None and old.canary.version == canary else 0
        return await self.set_routes(champion, canary, weight)

    async def startup(self) -> None:
        """Pinned version, else the saved routes, else the registry's aliases; failures leave it unready."""
        try:
            if self.config.pinned_version:
                await self.set_routes(self.config.pinned_version, None, 0, persist=False)
                return
            saved = await asyncio.to_thread(load_state, self.config.state_path)
            if saved is not None and saved.stable is not None:
                # The persisted routes at their persisted generation, before the first request is answered
                # (uvicorn binds the port only after this lifespan startup returns).
                await self.set_routes(saved.stable, saved.canary, saved.canary_weight, persist=False,
                                      generation=saved.generation, holdback=saved.holdback,
                                      holdback_weight=saved.holdback_weight)
            else:
                await self.reload_aliases()
        except Exception as exc:  # noqa: BLE001 - the process stays up and says why on /healthz
            self.ready_error = f"{type(exc).__name__}: {exc}"
            log.exception("gateway could not load its models")

    async def shutdown(self) -> None:
        for slot in {self.routes.stable, self.routes.canary, self.routes.holdback} - {None}:
            await slot.retire(timeout=10)  # type: ignore[union-attr]
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    # -- serving --------------------------------------------------------------------------------------
    def _variant_label(self, variant: str) -> str:
        return self.config.pinned_variant if self.config.pinned_version else variant

    async def predict(self, x: np.ndarray, client_id: str | None, client: str | None = None) -> dict[str, Any]:
        """``/predict``: route, answer with per-image classes, probabilities and prediction ids."""
        served = await self.route(x, client_id, client=client)
        return self._answer(served)

    def _unrandomised(self, n: int, client_id: str | None, version: str | None, client: str | None
                      ) -> Unrandomised | None:
        """Why a request of ``n`` images is not evidence (``None``: it is): see :mod:`mlcd.serving.evidence`."""
        if version is not None:
            return Unrandomised.PINNED
        if client_id is not None:
            return Unrandomised.STICKY
        if not self.evidence_bound.admit(client or "unknown", n):
            return Unrandomised.OVER_SHARE
        return None

    async def route(self, x: np.ndarray, client_id: str | None, version: str | None = None,
                    client: str | None = None) -> Served:
        """Answer ``x`` through the canary logic; every protocol (``/predict``, Open Inference) comes through here.

        Args:
            x: float32 ``N×28×28`` pixels in 0..255, already checked.
            client_id: sticky routing key; ``None`` routes each request by chance at the canary's weight.
            version: answer with exactly this served version (stable or canary); no weighting, no fallback:
                a caller that names a version gets that version's answer or its error.
            client: who sent it (its address): no client carries more than a bounded share of the evidence
                or of the drift window; ``None`` is one anonymous client.
        """
        if self.drift is not None and self.drift_bound.admit(client or "unknown", len(x)):
            # Inputs drift whatever the model answers: queued before the model call, scored with the rest of
            # this event-loop turn's requests in one call (mlcd.serving.driftfeed: one image costs as much as 32).
            if self._drift_feed is None or self._drift_feed.monitor is not self.drift:
                self._drift_feed = DriftFeed(self.drift)
            self._drift_feed.add(x)
        routes = self.routes  # one read: this request sees one consistent set of routes
        stable, canary = routes.stable, routes.canary
        if stable is None:
            raise RequestError(503, f"no model is being served ({self.ready_error})")
        reason = self._unrandomised(len(x), client_id, version, client)
        if version is not None:
            return await self._route_pinned(x, version, routes)
        variant = (choose_variant(routes.canary_weight, client_id, self.rng, self._sticky_key)
                   if canary is not None else STABLE)
        if routes.holdback is not None and choose_holdback(routes.holdback_weight, client_id, self.rng,
                                                           self._sticky_key):
            variant = HOLDBACK
        side = canary if variant == CANARY else routes.holdback if variant == HOLDBACK else None
        held = [stable] if side is None else [stable, side]
        for slot in held:
            slot.hold()
        fallback = False
        try:
            if side is not None:
                t0 = time.perf_counter()
                try:
                    probs = await side.predict(x)
                    self._observe(side, variant, t0, len(x), reason)
                except Exception as exc:  # noqa: BLE001 - counted against its variant, answered by stable
                    self._count_failure(side, variant, fallback=True, reason=reason)
                    log.warning("%s %s failed, answering with stable: %s", variant, side.version, exc)
                    variant, fallback = STABLE, True
            if variant == STABLE:
                t0 = time.perf_counter()
                try:
                    probs = await stable.predict(x)
                except Exception as exc:
                    self._count_failure(stable, STABLE, fallback=False, reason=reason)
                    raise RequestError(500, f"{self._which(stable)} failed: {type(exc).__name__}") from exc
                self._observe(stable, STABLE, t0, len(x), reason)
        finally:
            for slot in held:
                slot.release()
        served = stable if variant == STABLE else side
        assert served is not None
        return Served(served.version, self._variant_label(variant), probs, fallback, reason)

    async def _route_pinned(self, x: np.ndarray, version: str, routes: Routes) -> Served:
        slots = {v: s for v, s in ((STABLE, routes.stable), (CANARY, routes.canary), (HOLDBACK, routes.holdback))
                 if s is not None}
        match = [(variant, slot) for variant, slot in slots.items() if slot.version == version]
        if not match:
            serving = ", ".join(slot.version for slot in slots.values()) if self.config.expose_variant else "hidden"
            raise RequestError(404, f"model version {version} is not being served (serving: {serving})")
        variant, slot = match[0]
        slot.hold()
        try:
            t0 = time.perf_counter()
            try:
                probs = await slot.predict(x)
            except Exception as exc:
                self._count_failure(slot, variant, fallback=False, reason=Unrandomised.PINNED)
                raise RequestError(500, f"{self._which(slot)} failed: {type(exc).__name__}") from exc
            self._observe(slot, variant, t0, len(x), Unrandomised.PINNED)
        finally:
            slot.release()
        return Served(slot.version, self._variant_label(variant), probs, False, Unrandomised.PINNED)

    def _which(self, slot: ModelSlot) -> str:
        return f"model version {slot.version}" if self.config.expose_variant else "the model"

    def _count_failure(self, slot: ModelSlot, variant: str, fallback: bool,
                       reason: Unrandomised | None = None) -> None:
        label = self._variant_label(variant)
        if reason is not None:  # served and recorded, never evidence
            self.metrics.record_unrandomised(slot.version, label, reason, error=True)
            return
        self.metrics.requests.labels(slot.version, label).inc()
        self.metrics.errors.labels(slot.version, label).inc()
        if fallback:
            self.metrics.fallbacks.labels(slot.version, label).inc()

    def _observe(self, slot: ModelSlot, variant: str, t0: float, n: int,
                 reason: Unrandomised | None = None) -> None:
        label = self._variant_label(variant)
        if reason is not None:
            self.metrics.record_unrandomised(slot.version, label, reason, error=False)
            return
        self.metrics.latency.labels(slot.version, label).observe(time.perf_counter() - t0)
        self.metrics.requests.labels(slot.version, label).inc()

    def remember(self, served: Served) -> list[str]:
        """Count each image's predicted class and keep a prediction id per image for ``/feedback``."""
        ids = []
        model = self.config.model_name
        for cls in served.classes.tolist():
            # An unrandomised prediction carries why in its id: its label, if one comes, is not evidence either.
            why = None if served.unrandomised is None else served.unrandomised.value
            ids.append(self.ids.issue(model, served.version, served.variant, cls, unrandomised=why))
            if served.unrandomised is None:
                self.metrics.predictions.labels(served.version, served.variant, str(cls)).inc()
        return ids

    def _answer(self, served: Served) -> dict[str, Any]:
        ids = self.remember(served)
        predictions = [
            {"prediction_id": pid, "class": cls, "probabilities": row}
            for pid, cls, row in zip(ids, served.classes.tolist(), served.probs.tolist(), strict=True)
        ]
        answer: dict[str, Any] = {"model": self.config.model_name}
        if self.config.expose_variant:  # MLCD_EXPOSE_VARIANT=false: a client cannot tell the canary's answers
            answer.update({"version": served.version, "variant": served.variant, "fallback": served.fallback})
        answer["predictions"] = predictions
        return answer

    def check_feedback(self, authorization: str | None) -> None:
        """``/feedback`` takes its own bearer token (``MLCD_FEEDBACK_TOKEN``), never the admin token."""
        token = self.config.feedback_token
        if not token:
            raise RequestError(403, "feedback disabled: MLCD_FEEDBACK_TOKEN is not configured")
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise RequestError(401, "missing or wrong feedback token (Authorization: Bearer $MLCD_FEEDBACK_TOKEN)")

    def feedback(self, payload: Any) -> dict[str, Any]:
        """Count one label against the prediction its id names: only a signed, unexpired id, only once anywhere.

        Blocking (one SQL insert): the HTTP handler runs it in a worker thread.
        """
        if not isinstance(payload, dict):
            raise RequestError(422, "body must be a JSON object with 'prediction_id' and 'label'")
        pid, label = payload.get("prediction_id"), payload.get("label")
        if not isinstance(pid, str) or not pid:
            raise RequestError(422, "'prediction_id' must be a non-empty string")
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label <= 9:
            raise RequestError(422, "'label' must be an integer class in 0..9")
        try:
            served = take_label(self.ids, self.labels, self.config.model_name, pid)
        except LabelRefused as exc:
            raise RequestError(exc.status, str(exc)) from None
        correct = served.predicted == label
        if served.unrandomised is None:
            self.metrics.record_feedback(served.version, served.variant, correct)
        else:
            self.metrics.unrandomised_feedback.labels(served.version, served.variant,
                                                      Unrandomised(served.unrandomised).value,
                                                      "true" if correct else "false").inc()
        answer: dict[str, Any] = {"prediction_id": pid, "correct": correct}
        if self.config.expose_variant:
            answer.update({"version": served.version, "variant": served.variant})
        return answer

    def client_of(self, request: Request) -> str:
        """The client a request counts against: its address (behind a trusted proxy, the forwarded one)."""
        from mlcd.serving.evidence import client_address, parse_networks

        peer = request.client.host if request.client else None
        return client_address(peer, request.headers, parse_networks(self.config.trusted_proxies))

    def check_metrics(self, authorization: str | None) -> None:
        """``/metrics`` with ``MLCD_METRICS_TOKEN`` configured takes that token (or the admin token)."""
        token = self.config.metrics_token
        if not token:
            return
        scheme, _, given = (authorization or "").partition(" ")
        given_b = given.strip().encode()
        ok = scheme.lower() == "bearer" and (
            hmac.compare_digest(given_b, token.encode())
            or bool(self.config.admin_token) and hmac.compare_digest(given_b, (self.config.admin_token or "").encode()))
        if not ok:
            raise RequestError(401, "missing or wrong metrics token (Authorization: Bearer $MLCD_METRICS_TOKEN)")

    def check_admin(self, authorization: str | None) -> None:
        token = self.config.admin_token
        if not token:
            raise RequestError(403, "admin API disabled: MLCD_ADMIN_TOKEN is not configured")
        scheme, _, given = (authorization or "").partition(" ")
        # Constant-time compare so response timing does not leak the token.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise RequestError(401, "missing or wrong bearer token")


# Bodies larger than this are parsed in a worker *process*: json.loads holds the GIL for its whole run (a worker
# thread would stall the event loop, and with it /metrics and /healthz, just the same), while unpickling the
# parsed result costs about a quarter of parsing it. Small bodies are cheaper to parse inline.
PARSE_INLINE_BYTES = 64 * 1024
_PARSER: ProcessPoolExecutor | None = None
_PARSER_LOCK = threading.Lock()


def _parser_pool() -> ProcessPoolExecutor:
    """One spawned parser process per gateway process, started on first use (spawn: never fork TensorFlow)."""
    global _PARSER
    with _PARSER_LOCK:
        if _PARSER is None:
            import multiprocessing

            _PARSER = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_die_with_parent
            )
        return _PARSER


def _die_with_parent() -> None:
    """In the parser process: exit when the gateway dies, even by SIGKILL (no orphaned parsers)."""
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(0)


def _drop_parser_pool() -> None:
    global _PARSER
    with _PARSER_LOCK:
        pool, _PARSER = _PARSER, None
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


def _parse_outcome(raw: bytes) -> tuple[bool, Any]:
    """In the parser process: ``(True, value)`` or ``(False, one-line reason)`` (exceptions do not pickle well)."""
    try:
        return True, _parse_json(raw)
    except RequestError as err:
        return False, err.reason


async def _parse_off_loop(raw: bytes) -> Any:
    try:
        ok, value = await asyncio.get_running_loop().run_in_executor(_parser_pool(), _parse_outcome, raw)
    except (BrokenProcessPool, RuntimeError, OSError) as exc:  # the parser died or was shut down: parse here
        log.warning("JSON parser process unavailable (%s: %s); parsing in a thread", type(exc).__name__, exc)
        _drop_parser_pool()
        return await asyncio.to_thread(_parse_json, raw)
    if not ok:
        raise RequestError(400, str(value))
    return value


def _parse_json(raw: bytes) -> Any:
    """``json.loads`` with every failure as a one-line 400 (syntax, encoding, nesting too deep)."""
    try:
        return fastjson.loads(raw)  # msgspec on the happy path; json.loads decides (and words) every refusal
    except RecursionError:
        raise RequestError(400, "body is not acceptable JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"body is not valid JSON: {str(exc).splitlines()[0]}") from None


def check_declared_length(declared: str | None, limit: int) -> None:
    """Refuse a body whose ``Content-Length`` is over ``limit`` (413) or not a number (400), before reading it."""
    if declared is not None:
        try:
            if int(declared) > limit:
                raise RequestError(413, f"body of {declared} bytes exceeds the limit of {limit}")
        except ValueError:
            raise RequestError(400, "invalid Content-Length header") from None


async def read_bounded(request: Request, limit: int) -> bytes:
    """The whole body, refusing an oversized one (declared or streamed) before reading it whole."""
    check_declared_length(request.headers.get("content-length"), limit)
    from starlette.requests import ClientDisconnect

    from mlcd.serving.hardening import BODY_TIMEOUT_S

    chunks, size = [], 0
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):  # a body trickled byte by byte must not hold a slot forever
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise RequestError(413, f"body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestError(408, f"body not received within {BODY_TIMEOUT_S:.0f}s") from None
    except ClientDisconnect:  # the client hung up mid-upload: one line, no traceback
        log.info("client hung up after %d bytes of its request body", size)
        raise RequestError(400, "client disconnected before the body was complete") from None
    return b"".join(chunks)


async def _read_json(request: Request, limit: int) -> Any:
    """The body as JSON, refusing oversized bodies before reading them whole; parse errors are a one-line 400."""
    from mlcd.serving.hardening import content_type_refusal

    refusal = content_type_refusal(request.headers)  # a web page's simple POST never reaches a model
    if refusal is not None:
        raise RequestError(*refusal)
    return await parse_json_body(await read_bounded(request, limit))


async def parse_json_body(raw: bytes) -> Any:
    """``raw`` as JSON: small bodies inline, large ones in the parser process; failures are one-line 400s."""
    if len(raw) <= PARSE_INLINE_BYTES:
        return _parse_json(raw)
    return await _parse_off_loop(raw)


REFUSED_INTEGRITY = "artifact_integrity"


def _integrity_failure(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) is a model artifact that failed its digest/signature/safety check."""
    from mlcd.model_io import ArtifactIntegrityError

    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, ArtifactIntegrityError):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def create_app(config: GatewayConfig | None = None, loader: ModelLoader | None = None) -> FastAPI:
    """Build the gateway application; models load at startup (in a thread, so the loop stays responsive)."""
    from mlcd.serving.v2 import V2_PREFIX, add_v2_routes  # v2 builds on this module's Gateway

    config = config or GatewayConfig.from_settings()
    gateway = Gateway(config, loader)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gateway.startup()
        await gateway.start_drift()
        # The platform's rollbacks, fail-closed moves and guard heartbeat, for the alert rules (mlcd.serving.opsmetrics).
        ops = OpsCollector(config.ledger_url).register(gateway.metrics.registry).start()
        try:
            _parser_pool().submit(int)  # start the parser process now, not on the first large body
        except (RuntimeError, OSError) as exc:
            log.warning("JSON parser process not started (%s); large bodies are parsed in a thread", exc)
        yield
        ops.stop()
        await gateway.shutdown()
        _drop_parser_pool()

    app = FastAPI(title="mlcd gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.gateway = gateway

    def refuse(err: RequestError, path: str) -> JSONResponse:
        if 400 <= err.status < 500:
            gateway.metrics.rejected.labels(str(err.status)).inc()
        # The Open Inference Protocol's error body is {"error": ...}; mlcd's own routes keep FastAPI's "detail".
        key = "error" if path.startswith(V2_PREFIX) else "detail"
        return JSONResponse({key: err.reason, **err.extra}, status_code=err.status)

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, err: RequestError) -> JSONResponse:
        return refuse(err, request.url.path)

    add_v2_routes(app, gateway)

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        payload = await _read_json(request, config.max_body_bytes)
        x, client_id = parse_images(payload, config.max_batch_images)
        return JSONResponse(await gateway.predict(x, client_id, gateway.client_of(request)))

    @app.post("/feedback")
    async def feedback(request: Request) -> JSONResponse:
        gateway.check_feedback(request.headers.get("authorization"))  # before the body is even read
        payload = await _read_json(request, 4096)
        return JSONResponse(await asyncio.to_thread(gateway.feedback, payload))  # a SQL insert: off the loop

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        gateway.check_metrics(request.headers.get("authorization"))
        if gateway.drift is not None:
            gateway.metrics.set_drift(gateway.drift.report())
        return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        routes = gateway.routes
        body: dict[str, Any] = {"status": "ok" if gateway.ready_error is None else "unready"}
        if not config.expose_variant:  # hiding: which versions serve is for the admin API and /metrics only
            if gateway.ready_error is not None:
                body["reason"] = "not ready" if routes.stable is not None else "no model is being served"
            return JSONResponse(body, status_code=200 if gateway.ready_error is None else 503)
        body.update(routes.describe())
        body["batching"] = {
            slot.version: {"calls": slot.batcher.stats.calls, "mean_rows": round(slot.batcher.stats.mean_rows, 2)}
            for slot in (routes.stable, routes.canary, routes.holdback)
            if slot is not None
        }
        if gateway.ready_error is not None:
            body["reason"] = gateway.ready_error
        return JSONResponse(body, status_code=200 if gateway.ready_error is None else 503)

    @app.get("/admin/routes")
    async def get_routes(request: Request) -> JSONResponse:
        gateway.check_admin(request.headers.get("authorization"))
        return JSONResponse(gateway.routes.describe())

    @app.post("/admin/routes")
    async def set_routes(request: Request) -> JSONResponse:
        gateway.check_admin(request.headers.get("authorization"))
        body = await _read_json(request, 4096)
        if not isinstance(body, dict) or "stable" not in body:
            raise RequestError(422, "body must be {'stable': version, 'canary': version|null, 'canary_weight': 0..100}")
        stable, canary = body.get("stable"), body.get("canary")
        weight = body.get("canary_weight", 0)
        expected = body.get("expected_generation")
        holdback, held = body.get("holdback"), body.get("holdback_weight", 0)
        for name, value in (("stable", stable), ("canary", canary), ("holdback", holdback)):
            if value is not None and (not isinstance(value, str | int) or isinstance(value, bool)):
                raise RequestError(422, f"'{name}' must be a version string or null")
        if isinstance(weight, bool) or not isinstance(weight, int):
            raise RequestError(422, "'canary_weight' must be an integer percent")
        if isinstance(held, bool) or not isinstance(held, int):
            raise RequestError(422, "'holdback_weight' must be an integer percent")
        if expected is not None and (isinstance(expected, bool) or not isinstance(expected, int)):
            raise RequestError(422, "'expected_generation' must be an integer (the 'generation' last read)")
        try:
            routes = await gateway.set_routes(
                None if stable is None else str(stable), None if canary is None else str(canary), weight,
                expected_generation=expected, holdback=None if holdback is None else str(holdback),
                holdback_weight=held,
            )
        except RequestError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. the version does not exist in the registry
            # An artifact that fails its integrity check will never load: say so in a field the router reads,
            # so the canary counts it as a failed canary (a registry that is down is only a transient 409).
            extra = {"refused": REFUSED_INTEGRITY} if _integrity_failure(exc) else None
            raise RequestError(409, f"could not load the requested versions: {type(exc).__name__}: {exc}",
                               extra) from exc
        return JSONResponse(routes.describe())

    @app.post("/admin/weights")
    async def set_weight(request: Request) -> JSONResponse:
        gateway.check_admin(request.headers.get("authorization"))
        body = await _read_json(request, 1024)
        weight = body.get("canary_weight") if isinstance(body, dict) else None
        if isinstance(weight, bool) or not isinstance(weight, int):
            raise RequestError(422, "body must be {'canary_weight': 0..100, 'expected_generation'?: int}")
        expected = body.get("expected_generation")
        if expected is not None and (isinstance(expected, bool) or not isinstance(expected, int)):
            raise RequestError(422, "'expected_generation' must be an integer (the 'generation' last read)")
        routes = gateway.routes
        if routes.canary is None and weight > 0:
            raise RequestError(409, "no canary is loaded; set routes or reload aliases first")
        stable = routes.stable.version if routes.stable else None
        canary = routes.canary.version if routes.canary else None
        # Without an expected generation, the one just read: the weight applies to exactly these routes.
        expected = routes.generation if expected is None else expected
        held = routes.holdback.version if routes.holdback else None  # a weight move keeps the control
        return JSONResponse(
            (await gateway.set_routes(stable, canary, weight, expected_generation=expected, holdback=held,
                                      holdback_weight=routes.holdback_weight)).describe()
        )

    @app.post("/admin/reload")
    async def reload(request: Request) -> JSONResponse:
        gateway.check_admin(request.headers.get("authorization"))
        try:
            routes = await gateway.reload_aliases()
        except Exception as exc:  # noqa: BLE001
            raise RequestError(409, f"could not reload aliases: {type(exc).__name__}: {exc}") from exc
        return JSONResponse(routes.describe())

    return app
