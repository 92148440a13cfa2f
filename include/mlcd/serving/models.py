"""Loaded model versions ("slots"): a prediction function behind a micro-batcher, with an in-flight count.

A slot keeps serving the requests that were routed to it until they are answered, even after a hot swap has
taken it out of the routes; only then is it closed. TensorFlow and MLflow are imported only when a version is
loaded, so the gateway module imports without them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mlcd.serving.batching import MicroBatcher

log = logging.getLogger(__name__)

PredictFn = Callable[[np.ndarray], np.ndarray]
# version → function mapping float32 N×28×28 raw pixels to N×10 probabilities
ModelLoader = Callable[[str], PredictFn]


def mlflow_loader(model_name: str, tracking_uri: str) -> ModelLoader:
    """Load ``models:/<name>/<version>`` with the shared model contract (:mod:`mlcd.model_io`).

    Only the artifact the training run sealed is loaded: a digest or signature mismatch, or an artifact that asks
    for custom code, raises :class:`mlcd.model_io.ArtifactIntegrityError` (logged there), so the gateway refuses the
    version (a canary: ``409`` to the router, traffic stays on stable).
    """

    def load(version: str) -> PredictFn:
        from mlcd.model_io import load_predictor
        from mlcd.serving.compiled import compiled_proba

        predictor = load_predictor(f"models:/{model_name}/{version}", tracking_uri=tracking_uri)
        return compiled_proba(predictor)  # one traced graph per version: no eager per-layer Python per call

    return load


def resolve_alias(model_name: str, tracking_uri: str, alias: str) -> str | None:
    """The version behind ``alias``, or ``None`` when the alias is not set."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", "")) or "not found" in str(exc).lower():
            return None
        raise


@dataclass(eq=False)
class ModelSlot:
    """One loaded model version."""

    version: str
    batcher: MicroBatcher
    warning: str | None = None
    inflight: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def hold(self) -> None:
        self.inflight += 1
        self._idle.clear()

    def release(self) -> None:
        self.inflight -= 1
        if self.inflight <= 0:
            self._idle.set()

    async def predict(self, x: np.ndarray) -> np.ndarray:
        return await self.batcher.submit(x)

    async def retire(self, timeout: float = 60.0) -> None:
        """Wait until no routed request still needs this slot, then close its batcher."""
        if self.inflight > 0:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout=timeout)
            except TimeoutError:
                log.warning("version %s still had %d requests after %.0fs; closing", self.version, self.inflight, timeout)
        await self.batcher.aclose()


def build_slot(version: str, loader: ModelLoader, max_rows: int, max_wait_s: float) -> ModelSlot:
    """Load ``version`` (blocking: call it in a thread) and warm it up on one blank image.

    A version that fails its warm-up is still served, with a warning: the canary is the place where a broken
    model shows itself (its errors are counted and answered by the stable model) and the guard rolls it back.
    """
    fn = loader(version)
    warning = None
    try:
        out = np.asarray(fn(np.zeros((1, 28, 28), dtype=np.float32)))
        if out.shape != (1, 10):
            warning = f"warm-up returned shape {out.shape}, expected (1, 10)"
    except Exception as exc:  # noqa: BLE001 - reported, not hidden
        warning = f"warm-up failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    if warning:
        log.warning("model version %s: %s", version, warning)

    def checked(x: np.ndarray) -> np.ndarray:
        out = np.asarray(fn(x))
        if out.shape != (len(x), 10):
            raise ValueError(f"model version {version} returned shape {out.shape} for {len(x)} images")
        return out

    return ModelSlot(version=version, batcher=MicroBatcher(checked, max_rows, max_wait_s, name=version), warning=warning)
