"""The ``canary`` task: a deferrable operator that walks a version through the rollout spec's traffic steps.

Between steps the task defers on an ``AnalysisWindowTrigger`` for the analysis window, so no worker slot is held
while traffic accumulates; the trigger scrapes the gateway every ``poll_interval_s`` and feeds the analysis engine
(the guard's), ending the window at once on a failure. The rollout's progress (the engine's state included)
travels in the trigger, is updated by each poll (so ``serialize()`` carries it) and returns in its event. Every step's logic is
:class:`mlcd.rollout.canary.CanaryRollout` (Airflow-free and tested without Airflow). Importing this module
imports neither TensorFlow nor MLflow.
"""

from __future__ import annotations

import asyncio
import enum
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException
from airflow.triggers.base import BaseTrigger, TriggerEvent

from mlcd.airflow.notifiers import alert_ops_event
from mlcd.rollout.opsignals import add_listener
from mlcd.rollout.spec import Outcome, RolloutSpec

# Fail-closed moves and rollbacks reach the alert Connection (mlcd_alerts) from whichever task makes them.
add_listener(alert_ops_event)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from mlcd.rollout.canary import CanaryRollout, RolloutEnded, RolloutProgress

TASK_ID = "canary"
TRUE_STRINGS = {"true", "1", "yes", "on"}


def _as_bool(value: Any) -> bool:
    """Rendered templates are strings: ``"False"`` must not be truthy."""
    return value.strip().lower() in TRUE_STRINGS if isinstance(value, str) else bool(value)


class WindowEvent(str, enum.Enum):
    ELAPSED = "window_elapsed"


class AnalysisWindowTrigger(BaseTrigger):
    """One analysis window in the triggerer: polls the gateway into the engine, hands the progress back.

    Without ``gateway_url`` it only waits the window out (the step is judged by ``finish_step`` alone).
    """

    def __init__(self, progress: dict[str, Any], window_s: float, gateway_url: str | None = None,
                 spec: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.progress = progress
        self.window_s = window_s
        self.gateway_url = gateway_url
        self.spec = dict(spec or {})

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"progress": self.progress, "window_s": self.window_s, "gateway_url": self.gateway_url,
                 "spec": self.spec})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        started = float(self.progress.get("window_started") or time.time())
        end = started + self.window_s
        if self.gateway_url:
            from mlcd.rollout.canary import RolloutProgress, blind_expired, note_scrape, observe
            from mlcd.rollout.failsafe import METRICS_ERRORS
            from mlcd.rollout.providers import counters_from_settings
            from mlcd.rollout.spec import Outcome

            spec = RolloutSpec.from_dict(self.spec)
            # Off the triggerer's event loop, as every scrape below: building a provider may read a kubeconfig.
            scrape = await asyncio.to_thread(counters_from_settings)  # MLCD_METRICS_PROVIDER: /metrics or Prometheus
            while time.time() + spec.poll_interval_s < end:
                await asyncio.sleep(spec.poll_interval_s)
                try:
                    snap = await asyncio.to_thread(scrape, self.gateway_url)
                except METRICS_ERRORS as exc:  # a restarting gateway; blind too long: fail closed (finish_step)
                    self.log.warning("canary window scrape failed: %s", exc)
                    snap = None
                progress = RolloutProgress.from_dict(self.progress)
                usable, why = note_scrape(spec, progress, snap)
                outcome = observe(spec, progress, usable) if usable is not None else Outcome.INCONCLUSIVE
                self.progress = progress.to_dict()  # serialize() now carries the engine's state (and blindness)
                if outcome is Outcome.FAIL:
                    break
                if blind_expired(spec, progress):
                    # End the window now: the task (worker side, with the router and the registry) fails closed.
                    self.log.warning("canary window blind for %.0fs (%s): ending the window to fail closed",
                                     spec.blind_s, why)
                    break
        done_early = _failed(self.progress) or _blind(self.progress, self.spec)
        await asyncio.sleep(0.0 if done_early else max(0.0, end - time.time()))
        yield TriggerEvent({"status": WindowEvent.ELAPSED.value, "progress": self.progress})


def _blind(progress: Mapping[str, Any], spec: Mapping[str, Any]) -> bool:
    """The window's metrics have been unusable for the spec's fail-closed window (the task fails closed)."""
    since = progress.get("blind_since")
    return since is not None and time.time() - float(since) >= RolloutSpec.from_dict(spec).blind_s


def _failed(progress: Mapping[str, Any]) -> bool:
    verdict = progress.get("verdict") or {}
    return bool(verdict) and verdict.get("outcome") == Outcome.FAIL.value


def mapping_param(value: Any, what: str) -> dict[str, Any]:
    """A dict param arrives as a dict (native rendering) or as JSON text; anything else is refused in one line."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError as exc:
            raise AirflowException(f"{what} must be a JSON object: {exc}") from None
    if not isinstance(value, Mapping):
        raise AirflowException(f"{what} must be a mapping, got {type(value).__name__}")
    return dict(value)


class CanaryRolloutOperator(BaseOperator):
    """Set the ``canary`` alias on ``version``, move traffic step by step, and promote it at the end.

    Args:
        version: the registered model version to roll out (templated, e.g. from the register task's XCom).
        spec: a :class:`RolloutSpec` or its dict form (templated); default 5 → 25 → 50 → 100 %, 60 s windows.
        skip_canary: promote at once, recorded as "canary skipped" (templated, e.g. ``{{ params.skip_canary }}``).
        gateway_url, tracking_uri, model_name: override ``MLCD_GATEWAY_URL`` / ``MLFLOW_TRACKING_URI`` /
            ``MLCD_MODEL_NAME`` (templated).
        actor: recorded as who moved the aliases; the DAG run id is recorded with it.

    Returns (XCom): ``{"version", "result", "outcomes", "weight"}``. Skipped (a correct refusal, see
    :mod:`mlcd.airflow.refusals`) with the reason when the guard rolled the version back meanwhile or the canary's
    own analysis did; fails when traffic was moved by someone else or the version is no longer a canary.
    """

    template_fields: Sequence[str] = ("version", "spec", "skip_canary", "gateway_url", "tracking_uri", "model_name")
    ui_color = "#fde68a"

    def __init__(
        self,
        *,
        version: str,
        spec: RolloutSpec | Mapping[str, Any] | None = None,
        skip_canary: bool | str = False,
        gateway_url: str | None = None,
        tracking_uri: str | None = None,
        model_name: str | None = None,
        actor: str = "airflow:mlcd_retrain",
        task_id: str = TASK_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(task_id=task_id, **kwargs)
        self.version = version
        # A template string (e.g. "{{ params.canary_spec }}") stays a string until rendered at run time.
        self.spec: Any = spec.to_dict() if isinstance(spec, RolloutSpec) else (
            spec if isinstance(spec, str) else dict(spec or {}))
        self._gateway: str | None = None
        self.skip_canary = skip_canary
        self.gateway_url = gateway_url
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.actor = actor

    # -- helpers ----------------------------------------------------------------------------------------
    def _spec(self) -> RolloutSpec:
        spec = mapping_param(self.spec, "canary spec")
        from mlcd.settings import get_settings

        # Deploy-wide defaults (MLCD_CANARY_SPEC) first, then this run's overrides (the canary_spec param).
        deploy = get_settings().canary_spec
        base = json.loads(deploy) if deploy else {}
        if not isinstance(base, dict):
            raise AirflowException("MLCD_CANARY_SPEC must be a JSON object")
        return RolloutSpec.from_dict({**base, **spec})

    def _rollout(self, context: Context) -> CanaryRollout:
        from mlcd.airflow.hooks import MlflowHook
        from mlcd.rollout.canary import rollout_from_settings

        # The registry from the MLflow Connection (as the guard's), unless the task names a tracking URI itself.
        registry = None if self.tracking_uri else MlflowHook().get_registry(self.model_name or None)
        rollout = rollout_from_settings(
            self._spec(),
            registry=registry,
            actor=self.actor,
            dag_run_id=str(context.get("run_id") or ""),
            gateway_url=self.gateway_url or None,
            tracking_uri=self.tracking_uri or None,
            model_name=self.model_name or None,
        )
        self._gateway = rollout.metrics_url
        return rollout

    def _defer_window(self, progress: RolloutProgress) -> None:
        spec = self._spec()
        window = spec.analysis_window_s
        self.defer(
            # The progress rides in the trigger and comes back in its event: the event is the one channel
            # every runner (the triggerer, dag.test()) hands back to execute_complete intact.
            trigger=AnalysisWindowTrigger(progress=progress.to_dict(), window_s=float(window),
                                          gateway_url=self._gateway, spec=spec.to_dict()),
            method_name=self.execute_complete.__name__,
            timeout=timedelta(seconds=window * 3 + 300),  # a triggerer outage must not stall the rollout forever
        )

    @staticmethod
    def _summary(progress: RolloutProgress) -> dict[str, Any]:
        return {"version": progress.version, "result": progress.result, "outcomes": progress.outcomes,
                "weight": progress.weight}

    def _step(self, rollout: CanaryRollout, progress: RolloutProgress) -> dict[str, Any]:
        progress = rollout.begin_step(progress)
        if progress.done:
            return self._summary(progress)
        self._defer_window(progress)
        raise AssertionError("defer() returns only by raising")  # pragma: no cover

    # -- Airflow entry points ---------------------------------------------------------------------------
    def execute(self, context: Context) -> dict[str, Any]:
        from mlcd.rollout.canary import RolloutEnded, RolloutProgress

        version = str(self.version).strip()
        if not version or version in ("None", "null"):
            raise AirflowException("no model version to roll out (did the register task push one?)")
        rollout = self._rollout(context)
        run_id = context.get("run_id")
        try:
            if _as_bool(self.skip_canary):
                rollout.registry.promote(version, self.actor, "canary skipped by the skip_canary param",
                                         str(run_id or ""))
                rollout.router.set_routes(version, None, 0)
                return self._summary(RolloutProgress(version, version, 100, done=True, result="promoted, canary skipped"))
            progress = rollout.start(version, f"canary rollout of version {version} (DAG run {run_id})")
            if progress.done:
                self.log.info("version %s: %s", version, progress.result)
                return self._summary(progress)
            return self._step(rollout, progress)
        except RolloutEnded as exc:
            raise self._ended(exc) from None

    def execute_complete(self, context: Context, event: Any = None, progress: dict[str, Any] | None = None
                         ) -> dict[str, Any]:
        """Resumed after an analysis window: judge it, then defer for the next step or finish."""
        if isinstance(event, dict) and event.get("status") == WindowEvent.ELAPSED.value:
            progress = event.get("progress")
        from mlcd.rollout.canary import RolloutEnded, RolloutProgress

        if progress is None:
            raise AirflowException("resumed without rollout progress; re-run the canary task")
        rollout = self._rollout(context)
        try:
            result = rollout.finish_step(RolloutProgress.from_dict(progress))
            self.log.info("version %s at %d%%: %s → %s: %s", result.progress.version, result.progress.weight,
                          result.verdict.outcome.value, result.action.value, "; ".join(result.verdict.reasons))
            if result.progress.done:
                return self._summary(result.progress)
            return self._step(rollout, result.progress)
        except RolloutEnded as exc:
            raise self._ended(exc) from None

    def _ended(self, exc: RolloutEnded) -> AirflowException:
        """The task's end for a rollout that ended early, chosen by its :class:`~mlcd.rollout.canary.EndReason`."""
        from mlcd.rollout.canary import EndReason

        if exc.reason is EndReason.UNDECIDED:
            # Undecided is not a failure: the task says so and is skipped; the version stays eligible.
            self.log.warning("%s", exc)
            return AirflowSkipException(str(exc))
        if exc.reason in (EndReason.ROLLED_BACK, EndReason.ANALYSIS_FAILED):
            # A correct refusal (mlcd.airflow.refusals): the version was taken out of service with its evidence.
            from mlcd.airflow.refusals import Refusal

            self.log.warning("refused (%s): %s", Refusal.ROLLED_BACK.value, exc)
            return AirflowSkipException(f"refused ({Refusal.ROLLED_BACK.value}): {exc}")
        # Rolled back, refused, failed its analysis, or traffic moved by someone else: retrying cannot help.
        self.log.error("rollout ended (%s): %s", exc.reason.value, exc)
        return AirflowFailException(str(exc))
