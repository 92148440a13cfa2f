"""Airflow glue of the rollback guard: a trigger that polls the gateway, a deferrable sensor, task bodies, a notifier.

``CanaryHealthTrigger`` runs :class:`mlcd.guard.watch.Guard` in the triggerer every few seconds (each poll in a
thread, so the triggerer's event loop never blocks on HTTP) and yields exactly one event: ``breach``,
``healthy`` or ``error``. ``CanaryHealthSensor`` (task ``watch`` of ``mlcd_guard``) polls once in ``execute``,
returns at once if that already decides, and otherwise defers to the trigger, so no worker slot is held while
a canary bakes. The sensor returns the decision; the DAG's short-circuit lets ``rollback`` run only on a breach.

Importing this module imports neither TensorFlow nor MLflow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import timedelta
from enum import Enum
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException
from airflow.triggers.base import BaseTrigger, TriggerEvent

from mlcd.airflow.notifiers import alert_ops_event
from mlcd.rollout.opsignals import add_listener

HEARTBEAT_S = 10.0  # the guard trigger's heartbeat interval in the ledger (mlcd_guard_last_poll_timestamp_seconds)

# Fail-closed moves and rollbacks reach the alert Connection (mlcd_alerts) from whichever task makes them.
add_listener(alert_ops_event)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from mlcd.guard.watch import GuardConfig, PollResult
    from mlcd.registry.protocol import Registry
    from mlcd.rollout.router import Router

TASK_ID = "watch"


class GuardStatus(str, Enum):
    """The one event a :class:`CanaryHealthTrigger` yields."""

    BREACH = "breach"
    HEALTHY = "healthy"
    UNVERIFIED = "unverified"
    FAIL_CLOSED = "fail_closed"  # metrics unreadable for blind_s: canary to 0 %, rollout paused
    ERROR = "error"


class GuardReason(str, Enum):
    """Why the trigger ended; :meth:`CanaryHealthSensor.execute_complete` maps each to one outcome.

    The first six are the core's :class:`mlcd.guard.watch.StopReason` (same values); the rest are the trigger's own.
    """

    CANARY_FAILED = "canary_failed"  # breach of a canary
    CHAMPION_FAILED = "champion_failed"  # breach in the bake period after promotion
    BAKE_COMPLETE = "bake_complete"
    BAKE_UNVERIFIED = "bake_unverified"  # the bake period saw too little traffic to call the version healthy
    NO_CANARY = "no_canary"
    VERSION_RETIRED = "version_retired"
    METRICS_BLIND = "metrics_blind"  # fail closed (mlcd.rollout.failsafe)
    SCRAPE_FAILED = "scrape_failed"  # the gateway did not answer several polls in a row
    WATCH_TIMEOUT = "watch_timeout"
    TRIGGER_ERROR = "trigger_error"


class GuardScrapeError(AirflowException):
    """The gateway's metrics could not be read (retried: the gateway may be restarting)."""


class GuardTimeout(AirflowException):
    """The version was still being watched when ``max_watch_s`` ran out."""


class GuardTriggerError(AirflowException):
    """The trigger failed unexpectedly; the message says how."""


def _reason_of(result: PollResult) -> GuardReason:
    """The event reason of a deciding :class:`~mlcd.guard.watch.PollResult`: its ``StopReason``, never its message."""
    if result.stop is None:
        raise ValueError(f"guard decision {result.decision.value} without a StopReason: {result.reason}")
    return GuardReason(result.stop.value)


def guard_config(
    gateway_url: str | None,
    version: str | None,
    poll_interval_s: float,
    bake_s: float,
    grace_s: float,
    thresholds: Mapping[str, Any] | None,
    blind_s: float | str | None = None,
) -> GuardConfig:
    """A :class:`~mlcd.guard.watch.GuardConfig` from plain (serialisable) arguments."""
    from mlcd.guard.watch import GuardConfig
    from mlcd.rollout.analysis import GuardThresholds
    from mlcd.settings import get_settings

    return GuardConfig(
        gateway_url=gateway_url or get_settings().gateway_url,
        version=str(version) if version not in (None, "", "None") else None,
        poll_interval_s=float(poll_interval_s),
        bake_s=float(bake_s),
        grace_s=float(grace_s),
        thresholds=GuardThresholds.from_dict(dict(thresholds or {})),
        **({"blind_s": float(blind_s)} if blind_s not in (None, "", "None") else {}),
    )


def _checkpoint_key(state: Mapping[str, Any]) -> str:
    """``guard/<version>-<started_at>``: the state-store row of one guard run's latest state."""
    return f"guard/{state.get('version') or 'waiting'}-{float(state.get('started_at') or 0):.3f}"


def _same_run_further(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    """``new`` is the same guard run as ``old`` and has seen more polls (only such a state replaces a checkpoint)."""
    same = old.get("started_at") == new.get("started_at") and old.get("version") == new.get("version")
    return same and int(new.get("polls", 0)) > int(old.get("polls", 0))


def _save_checkpoint(state: Any) -> None:
    """Record the guard's state after a poll in the shared state store (:mod:`mlcd.statestore`, the database at
    ``MLCD_LEDGER_URL``), so a triggerer restarted on another machine continues it; a failed write only costs
    restart safety. Compare-and-set: a stale triggerer (fewer polls) never overwrites a newer state."""
    from sqlalchemy.exc import SQLAlchemyError

    from mlcd.statestore import StateStore

    data = state.to_dict()
    try:
        StateStore().replace_if(_checkpoint_key(data), data, _same_run_further)
    except (SQLAlchemyError, OSError) as exc:  # best effort by design
        import logging

        logging.getLogger(__name__).warning("guard checkpoint not saved: %s", exc)


def _newest(state: Mapping[str, Any]) -> dict[str, Any]:
    """The serialised state, or the checkpoint of the same guard run when it has seen more polls."""
    from sqlalchemy.exc import SQLAlchemyError

    from mlcd.statestore import StateStore

    data = dict(state)
    try:
        saved = StateStore().get(_checkpoint_key(data))
    except (SQLAlchemyError, OSError, ValueError):
        return data
    if saved is not None and _same_run_further(saved, data):  # the same run, further than the trigger's kwargs
        return dict(saved)
    return data


class CanaryHealthTrigger(BaseTrigger):
    """Poll the gateway every ``poll_interval_s`` and judge the watched version until a decision.

    Args:
        gateway_url: the gateway whose ``/metrics`` is read.
        version: the version to watch (``None``: the first canary the gateway serves).
        poll_interval_s, bake_s, grace_s: see :class:`~mlcd.guard.watch.GuardConfig`.
        thresholds: :class:`~mlcd.rollout.analysis.GuardThresholds` as a dict.
        state: the guard's state when the trigger starts (the sensor's first poll).
        max_watch_s: give up (``error`` / ``watch_timeout``) after this many seconds since the guard started.
        max_failures: consecutive failed polls tolerated before ``scrape_failed`` (unreadable metrics are the
            guard's own business: they end in ``fail_closed`` after ``blind_s``).
        blind_s: see :class:`~mlcd.guard.watch.GuardConfig` (``None``: ``MLCD_METRICS_BLIND_S`` or 30).
    """

    def __init__(
        self,
        gateway_url: str,
        version: str | None = None,
        poll_interval_s: float = 2.0,
        bake_s: float = 300.0,
        grace_s: float = 300.0,
        thresholds: Mapping[str, Any] | None = None,
        state: Mapping[str, Any] | None = None,
        max_watch_s: float = 6 * 3600.0,
        max_failures: int = 10,
        blind_s: float | None = None,
    ) -> None:
        super().__init__()
        self.gateway_url = gateway_url
        self.version = version
        self.poll_interval_s = float(poll_interval_s)
        self.bake_s = float(bake_s)
        self.grace_s = float(grace_s)
        self.thresholds = dict(thresholds or {})
        self.state = dict(state or {})
        self.max_watch_s = float(max_watch_s)
        self.max_failures = int(max_failures)
        self.blind_s = None if blind_s is None else float(blind_s)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "gateway_url": self.gateway_url,
                "version": self.version,
                "poll_interval_s": self.poll_interval_s,
                "bake_s": self.bake_s,
                "grace_s": self.grace_s,
                "thresholds": self.thresholds,
                "state": self.state,
                "max_watch_s": self.max_watch_s,
                "max_failures": self.max_failures,
                "blind_s": self.blind_s,
            },
        )

    def _event(self, status: GuardStatus, reason: GuardReason, message: str, **payload: Any) -> TriggerEvent:
        return TriggerEvent({"status": status.value, "reason": reason.value, "message": message, **payload})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from mlcd.guard.watch import Decision, Guard, GuardState, scrape_from_settings
        from mlcd.rollout.opsignals import WATCHING, OpsEvent
        from mlcd.rollout.opsignals import record as record_signal

        try:
            config = guard_config(self.gateway_url, self.version, self.poll_interval_s, self.bake_s,
                                  self.grace_s, self.thresholds, self.blind_s)
            # Everything that may block (building the provider reads a kubeconfig, the checkpoint is a SQL row)
            # runs in a worker thread: the triggerer's one event loop serves every deferred task.
            scrape = await asyncio.to_thread(scrape_from_settings)  # MLCD_METRICS_PROVIDER: gateway or Prometheus
            guard = Guard(config, scrape)
            state = GuardState.from_dict(await asyncio.to_thread(_newest, self.state)) if self.state else None
            started = state.started_at if state else time.time()
            failures = 0
            last_beat = float("-inf")
            while True:
                try:
                    result = await asyncio.to_thread(guard.poll, state)
                    failures = 0
                except OSError as exc:  # URLError, connection refused, timeouts: the gateway may be restarting
                    failures += 1
                    self.log.warning("guard scrape %d/%d failed: %s", failures, self.max_failures, exc)
                    if failures >= self.max_failures:
                        yield self._event(GuardStatus.ERROR, GuardReason.SCRAPE_FAILED,
                                          f"gateway {config.gateway_url} unreadable {failures} times in a row: "
                                          f"{exc}")
                        return
                    await asyncio.sleep(config.poll_interval_s)
                    continue
                state = result.state
                self.log.info("guard: %s", result.reason)
                # serialize() now returns the state after this poll (evidence, samples, looks), and the checkpoint
                # lets a restarted triggerer continue the same sequential test instead of starting a fresh one.
                self.state = state.to_dict()
                await asyncio.to_thread(_save_checkpoint, state)
                # The heartbeat mlcd_guard_last_poll_timestamp_seconds / mlcd_guard_watching are exported from: at
                # most one write per HEARTBEAT_S while watching (the alert waits minutes), and the run's decision.
                if result.decision is not Decision.WATCH or time.monotonic() - last_beat >= HEARTBEAT_S:
                    last_beat = time.monotonic()
                    await asyncio.to_thread(record_signal, OpsEvent.GUARD_POLL, str(state.version),
                                            WATCHING if result.decision is Decision.WATCH else result.decision.value)
                if result.decision is not Decision.WATCH:
                    status = {Decision.BREACH: GuardStatus.BREACH, Decision.UNVERIFIED: GuardStatus.UNVERIFIED,
                              Decision.BLIND: GuardStatus.FAIL_CLOSED}.get(result.decision, GuardStatus.HEALTHY)
                    reason = _reason_of(result)
                    yield self._event(status, reason, result.reason, result=result.as_dict())
                    return
                if time.time() - started >= self.max_watch_s:
                    yield self._event(GuardStatus.ERROR, GuardReason.WATCH_TIMEOUT,
                                      f"still watching version {state.version} after {self.max_watch_s:.0f}s",
                                      result=result.as_dict())
                    return
                await asyncio.sleep(config.poll_interval_s)
        except Exception as exc:  # noqa: BLE001 - one error event with the message, as every trigger here
            yield self._event(GuardStatus.ERROR, GuardReason.TRIGGER_ERROR, f"{type(exc).__name__}: {exc}")


class CanaryHealthSensor(BaseOperator):
    """Watch a canary (and the champion it becomes, through its bake period); return the decision.

    A deferrable sensor in the shape every mlcd sensor has: ``execute`` polls once and returns when that
    already decides; otherwise it defers to :class:`CanaryHealthTrigger`. It returns (XCom)
    ``{"decision": "breach"|"healthy", "reason", "version", "stable", "phase", "look", "verdict", ...}``: a
    breach is not a task failure, it is the input of the ``rollback`` task.

    Args:
        gateway_url: the gateway (templated; default ``MLCD_GATEWAY_URL``).
        version: the version to watch (templated; default: the first canary the gateway serves).
        poll_interval_s, bake_s, grace_s, thresholds: see :class:`~mlcd.guard.watch.GuardConfig` (templated).
        max_watch_s: the longest a guard run watches.
        blind_s: fail closed after this many seconds without readable metrics (templated; default
            ``MLCD_METRICS_BLIND_S`` or 30).
    """

    template_fields: Sequence[str] = ("gateway_url", "version", "poll_interval_s", "bake_s", "grace_s",
                                      "thresholds", "blind_s")
    ui_color = "#fecaca"

    def __init__(
        self,
        *,
        gateway_url: str | None = None,
        version: str | None = None,
        poll_interval_s: float | str = 2.0,
        bake_s: float | str = 300.0,
        grace_s: float | str = 300.0,
        thresholds: Mapping[str, Any] | str | None = None,
        max_watch_s: float = 6 * 3600.0,
        blind_s: float | str | None = None,
        task_id: str = TASK_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(task_id=task_id, **kwargs)
        self.gateway_url = gateway_url
        self.version = version
        self.poll_interval_s = poll_interval_s
        self.bake_s = bake_s
        self.grace_s = grace_s
        self.thresholds: Any = thresholds if isinstance(thresholds, str) else dict(thresholds or {})
        self.max_watch_s = max_watch_s
        self.blind_s = blind_s

    def _thresholds(self) -> dict[str, Any]:
        from mlcd.airflow.canary import mapping_param

        return mapping_param(self.thresholds, "guard thresholds")

    def _trigger_kwargs(self) -> dict[str, Any]:
        blind = None if self.blind_s in (None, "", "None") else float(self.blind_s)
        cfg = guard_config(self.gateway_url, self.version, float(self.poll_interval_s), float(self.bake_s),
                           float(self.grace_s), self._thresholds(), blind)
        return {
            "gateway_url": cfg.gateway_url,
            "version": cfg.version,
            "poll_interval_s": cfg.poll_interval_s,
            "bake_s": cfg.bake_s,
            "grace_s": cfg.grace_s,
            "thresholds": cfg.thresholds.as_dict(),
            "max_watch_s": float(self.max_watch_s),
            "blind_s": cfg.blind_s,
        }

    def execute(self, context: Context) -> dict[str, Any]:
        from mlcd.guard.watch import Decision, Guard, scrape_from_settings

        kwargs = self._trigger_kwargs()
        config = guard_config(kwargs["gateway_url"], kwargs["version"], kwargs["poll_interval_s"],
                              kwargs["bake_s"], kwargs["grace_s"], kwargs["thresholds"], kwargs["blind_s"])
        try:
            first = Guard(config, scrape_from_settings()).poll()
        except OSError as exc:
            raise GuardScrapeError(f"gateway {config.gateway_url} unreadable: {exc}") from None
        self.log.info("guard: %s", first.reason)
        if first.decision is Decision.BLIND:
            return fail_closed_step(first.as_dict(), run_id=str(context.get("run_id") or ""),
                                    gateway_url=config.gateway_url)
        if first.decision is not Decision.WATCH:
            return first.as_dict()
        self.defer(
            trigger=CanaryHealthTrigger(**kwargs, state=first.state.to_dict()),
            method_name=self.execute_complete.__name__,
            # A safety net above the trigger's own limit: a lost triggerer must not hold the run forever.
            timeout=timedelta(seconds=float(self.max_watch_s) + 600),
        )
        raise AssertionError("defer() returns only by raising")  # pragma: no cover

    def execute_complete(self, context: Context, event: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Map the trigger's event: breach / healthy return the decision; each error reason raises its own."""
        if not event:
            raise GuardTriggerError("resumed without a trigger event")
        reason = GuardReason(event.get("reason", GuardReason.TRIGGER_ERROR.value))
        message = str(event.get("message", ""))
        if reason in (GuardReason.CANARY_FAILED, GuardReason.CHAMPION_FAILED):
            self.log.warning("BREACH: %s", message)
            return dict(event["result"])
        if reason in (GuardReason.BAKE_COMPLETE, GuardReason.NO_CANARY, GuardReason.VERSION_RETIRED):
            self.log.info("healthy: %s", message)
            return release_step(dict(event["result"]), reason, run_id=str(context.get("run_id") or ""),
                                gateway_url=self.gateway_url)
        if reason is GuardReason.BAKE_UNVERIFIED:
            self.log.warning("UNVERIFIED (not rolled back, not verified healthy): %s", message)
            return release_step(dict(event["result"]), reason, run_id=str(context.get("run_id") or ""),
                                gateway_url=self.gateway_url)
        if reason is GuardReason.METRICS_BLIND:
            self.log.warning("FAIL CLOSED: %s", message)
            return fail_closed_step(dict(event["result"]), run_id=str(context.get("run_id") or ""),
                                    gateway_url=self.gateway_url)
        if reason is GuardReason.SCRAPE_FAILED:
            raise GuardScrapeError(message)
        if reason is GuardReason.WATCH_TIMEOUT:
            raise GuardTimeout(message)
        raise GuardTriggerError(message)


# --- task bodies -------------------------------------------------------------------------------------------


def is_breach(decision: Mapping[str, Any] | None) -> bool:
    """The short-circuit between ``watch`` and ``rollback``: True only for a breach."""
    from mlcd.guard.watch import Decision

    return decision is not None and decision.get("decision") == Decision.BREACH.value


def _registry_and_router(gateway_url: str | None = None) -> tuple[Registry, Router]:
    from mlcd.airflow.hooks import MlflowHook
    from mlcd.rollout.router import router_from_settings

    return MlflowHook().get_registry(), router_from_settings(gateway_url or None)


def rollback_step(decision: Mapping[str, Any], *, run_id: str | None, gateway_url: str | None = None,
                  actor: str = "airflow:mlcd_guard") -> dict[str, Any]:
    """Roll the breached version back (traffic first, then the registry); returns what the notifier says."""
    from mlcd.rollout.actions import rollback

    version = decision.get("version")
    if not version:
        raise AirflowException(f"breach without a version to roll back: {dict(decision)}")
    registry, router = _registry_and_router(gateway_url)
    reason = f"guard: {decision.get('reason', 'breach')}"
    evidence = {"verdict": decision.get("verdict"), "phase": decision.get("phase"), "look": decision.get("look"),
                "elapsed_s": decision.get("elapsed_s"), "stable": decision.get("stable")}
    result = rollback(registry, router, str(version), reason, evidence, actor, run_id)
    out = result.as_dict()
    out["message"] = (
        f"mlcd: version {result.version} rolled back"
        + (" (already rolled back)" if result.already else "")
        + f"; 100% of traffic on version {result.restored}. Reason: {result.reason}"
    )
    return out


def release_step(decision: Mapping[str, Any], reason: GuardReason, *, run_id: str | None,
                 gateway_url: str | None = None, actor: str = "airflow:mlcd_guard") -> dict[str, Any]:
    """The bake is over: the previous champion's holdback goes to 0 (:func:`mlcd.rollout.holdback.release`).

    Only a bake that ended (complete or unverified) releases; a release that cannot move traffic is logged and
    reported in the result (the holdback keeps its small share until the next route change), never a breach.
    """
    if reason not in (GuardReason.BAKE_COMPLETE, GuardReason.BAKE_UNVERIFIED) or not decision.get("version"):
        return dict(decision)
    import logging

    from mlcd.rollout.holdback import release

    try:
        registry, router = _registry_and_router(gateway_url)
        done = release(router, registry, str(decision["version"]), f"guard: {reason.value}", actor, run_id)
        out = done.as_dict()
    except Exception as exc:  # noqa: BLE001 - best effort: the bake's verdict stands; the record says what failed
        logging.getLogger(__name__).warning("holdback of version %s not released: %s", decision.get("version"), exc)
        out = {"released": False, "detail": f"not released: {type(exc).__name__}: {exc}"}
    return {**dict(decision), "holdback_release": out}


def fail_closed_step(decision: Mapping[str, Any], *, run_id: str | None, gateway_url: str | None = None,
                     actor: str = "airflow:mlcd_guard") -> dict[str, Any]:
    """The guard went blind: canary to 0 % through the router, then the pause in the record (MLflow may be down).

    Returns the decision with what was done (``fail_closed``); raises a retryable ``GuardScrapeError`` only when
    the traffic could not be moved (the gateway is unreachable too), after recording what it could.
    """
    from mlcd.rollout.failsafe import fail_closed
    from mlcd.rollout.router import router_from_settings

    version = decision.get("version")
    if not version:
        raise AirflowException(f"fail closed without a version: {dict(decision)}")
    router = router_from_settings(gateway_url or None)  # traffic first: needs no registry
    try:
        from mlcd.airflow.hooks import MlflowHook

        registry: Any = MlflowHook().get_registry()
    except Exception:  # noqa: BLE001 - an unreadable Connection must not stop the traffic move
        registry = None
    done = fail_closed(router, registry, str(version), f"guard: {decision.get('reason', 'metrics unreadable')}",
                       actor, run_id)
    if not done.traffic_safe:
        raise GuardScrapeError(f"fail closed: {done.error}")
    return {**dict(decision), "fail_closed": done.as_dict()}


def control_step(action: str, version: str | None, reason: str, *, actor: str, run_id: str | None,
                 gateway_url: str | None = None, dry_run: bool = False) -> dict[str, Any]:
    """``mlcd_control``'s one task: rollback / promote / pause / resume by hand, recorded with who asked."""
    from mlflow.exceptions import MlflowException

    from mlcd.registry import RegistryError
    from mlcd.registry.errors import RegistryUnavailableError
    from mlcd.rollout.actions import manual

    if not str(reason or "").strip():
        raise AirflowException("a reason is required")
    registry, router = _registry_and_router(gateway_url)
    try:
        # The same implementation as `mlcd rollback|promote|pause|resume` (explicit version, dry run, who asked).
        out = manual(action, registry, router, version, reason, actor, run_id, dry_run=dry_run)
    except RegistryUnavailableError:
        raise  # the server is down or restarting: a retry may well succeed
    except (RegistryError, MlflowException, ValueError) as err:
        from airflow.sdk.exceptions import AirflowFailException

        # A refused move (wrong state, stale alias, no version) will be refused again: fail without retries.
        raise AirflowFailException(str(err)) from None
    if out.get("dry_run"):
        import logging

        logging.getLogger(__name__).info("dry run, nothing changed: %s", out["plan"])
    return out


def triggering_user(dag_run: Any) -> str:
    """Who pressed Trigger (Airflow 3 records it on the DAG run), else ``airflow-ui``."""
    user = getattr(dag_run, "triggering_user_name", None) if dag_run is not None else None
    return f"airflow-ui:{user}" if user else "airflow-ui"


# --- notifier ----------------------------------------------------------------------------------------------


def _not_listening(exc: BaseException) -> bool:
    """A refused connection (nothing listens on the port), also when urllib wraps it in a ``URLError``."""
    reason = getattr(exc, "reason", None)
    return isinstance(exc, ConnectionRefusedError) or isinstance(reason, ConnectionRefusedError)


def drift_step(gateway_url: str | None = None, cooldown_s: float = 6 * 3600.0) -> dict[str, Any]:
    """Succeed (so the task's ``mlcd_drift`` outlet emits an Asset event) only when live inputs drifted.

    Skipped when the window did not drift, when the gateway exports no drift gauges, or when a signal sent
    within ``cooldown_s`` still holds (one drifted window must not start a retrain every few minutes); a signal
    whose retrain produced no champion (rejected, rolled back, nothing registered) no longer holds
    (:func:`mlcd.guard.signals.drift_signal`; the decision and its reason are kept for the page).
    """
    import logging

    from airflow.sdk.exceptions import AirflowSkipException

    from mlcd.airflow.hooks import MlflowHook
    from mlcd.guard.signals import drift_signal, read_drift, registry_versions
    from mlcd.settings import get_settings

    s = get_settings()
    url = gateway_url or s.gateway_url
    try:
        status = read_drift(url, token=s.metrics_token or s.admin_token)
    except OSError as exc:
        if _not_listening(exc):
            # Nothing listens yet (the platform is starting, or no model served): no inputs, so no drift to read.
            # Not a fault of this DAG; a gateway that is down is the page's and the guard's to report.
            raise AirflowSkipException(f"gateway {url} is not listening (not up yet?): no drift to read") from None
        raise AirflowException(f"gateway {url} unreadable: {exc}") from None
    if status is None:
        raise AirflowSkipException(f"gateway {url} exports no drift gauges (MLCD_DRIFT=off?)")
    if not status.drifted:
        raise AirflowSkipException(f"no input drift: {status.as_dict()}")
    versions: list[tuple[int, str]] | None
    try:
        versions = registry_versions(s.model_name, MlflowHook().config.tracking_uri)
    except Exception as exc:  # noqa: BLE001 - outcome unknown: the plain cooldown holds, nothing is released
        logging.getLogger(__name__).warning("registry unreadable (%s: %s): the drift cooldown is not released",
                                            type(exc).__name__, exc)
        versions = None
    signalled, hold, reason = drift_signal(cooldown_s, status.as_dict(), versions)
    if not signalled:  # a compare-and-set row in the ledger's database: one signal per cooldown
        raise AirflowSkipException(f"drifted, but the cooldown holds ({hold.value}): {reason}")
    logging.getLogger(__name__).info("drift signalled (%s): %s", hold.value, reason)
    return {**status.as_dict(), "cooldown": hold.value, "why": reason}
