"""What a rollout does to traffic and the registry by decision: rollback, promote, pause/resume.

The guard (``mlcd_guard``), a canary step that fails its analysis, ``mlcd rollback`` / ``promote`` / ``pause``
and ``mlcd_control`` all call these, so they live in the rollout layer: :mod:`mlcd.guard` decides *when*, this
module does *what* (``mlcd.rollout`` never imports ``mlcd.guard``).

:func:`rollback` takes traffic back: it routes 100 % to stable through the :class:`~mlcd.rollout.router.Router`
*first* (users before bookkeeping), then moves the registry (``canary`` alias removed, or ``champion`` given
back to ``previous``), marks the version ``rolled_back`` with the evidence and tags who did it. A second
rollback of the same version only makes sure no traffic reaches it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from mlcd.registry.protocol import Registry
from mlcd.registry.state import RolloutState
from mlcd.registry.tags import (
    TAG_ROLLBACK_CHECKS,
    TAG_ROLLBACK_REASON,
    TAG_ROLLED_BACK_AT,
    TAG_ROLLED_BACK_BY,
    Alias,
    Event,
)
from mlcd.rollout.router import Router, RouteStatus
from mlcd.rollout.spec import Outcome

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RollbackResult:
    """What a rollback did.

    Attributes:
        version: the version taken out of service.
        restored: the version that now takes 100 % of the traffic.
        already: the version was rolled back before (this call only made sure no traffic reaches it).
        state: the version's rollout state afterwards.
        reason: the recorded reason.
    """

    version: str
    restored: str | None
    already: bool
    state: RolloutState
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "state": self.state.value}


def _failed_checks(evidence: Mapping[str, Any] | None) -> list[str]:
    verdict = (evidence or {}).get("verdict") or evidence or {}
    return [c["name"] for c in verdict.get("checks", []) if c.get("outcome") == Outcome.FAIL.value]


def rollback(
    registry: Registry,
    router: Router,
    version: str,
    reason: str,
    evidence: Mapping[str, Any] | None = None,
    actor: str = "mlcd",
    dag_run_id: str | None = None,
) -> RollbackResult:
    """Take ``version`` out of service: traffic first, then the registry, then tags. Idempotent.

    Args:
        registry: the rollout record and aliases (:class:`mlcd.registry.Registry`).
        router: where traffic is moved (local gateway or Kubernetes HTTPRoute).
        version: the canary, or the champion in its bake period.
        reason: one line a person reads in the rollout record.
        evidence: the verdict (statistics, counts, p-values), stored with the record.
        actor: who asked (``mlcd_guard``, ``airflow-ui:<user>``, ``cli:<user>``).
        dag_run_id: the DAG run, when there is one.

    Returns:
        What was done. Raises :class:`mlcd.registry.RolloutError` for a version that is neither a canary nor a
        champion (e.g. only registered), and ``RouterError`` when traffic cannot be moved: then nothing in
        the registry changes, so a retry starts over cleanly.
    """
    from mlcd.registry.retries import bounded_mlflow_retries

    version = str(version)
    routes = router.get_routes()
    moved = routes.canary == version and bool(routes.stable) and routes.stable != version
    held = getattr(routes, "holdback", None)
    if moved:
        # Users before bookkeeping, before the registry is even asked: a served canary goes back to the stable
        # version the router already holds, so this step needs no MLflow (it may be down: that is often why).
        router.set_routes(str(routes.stable), None, 0)
        log.warning("version %s: 100%% of traffic back on version %s (%s)", version, routes.stable, reason)
    elif routes.stable == version and held and held != version:
        # A champion in its bake: the holdback is the previous champion, already loaded and serving: all back there.
        router.set_routes(str(held), None, 0)
        log.warning("version %s: 100%% of traffic back on the holdback version %s (%s)", version, held, reason)
        moved = True
    # Each registry call gives up in seconds (MLflow's own default retries for minutes); a failure here leaves
    # traffic safe and the task's retry (or `mlcd reconcile`) completes the record.
    with bounded_mlflow_retries():
        return _rollback_record(registry, router, version, reason, evidence, actor, dag_run_id, routes, moved)


def _rollback_record(registry: Registry, router: Router, version: str, reason: str,
                     evidence: Mapping[str, Any] | None, actor: str, dag_run_id: str | None, routes: RouteStatus,
                     moved: bool) -> RollbackResult:
    from mlcd.registry.base import now_iso
    from mlcd.registry.errors import RolloutError

    record = registry.get_state(version)
    aliases = registry.aliases()
    if record.state is RolloutState.ROLLED_BACK:
        restored = routes.stable if routes.stable != version else aliases.get(Alias.CHAMPION)
        if version in (routes.stable, routes.canary) and restored and restored != version:
            router.set_routes(restored, None, 0)  # the record says rolled back: serving must agree
        return RollbackResult(version, restored, True, record.state, record.tags.get(
            TAG_ROLLBACK_REASON, reason))
    if record.state is RolloutState.CANARY:
        restored = routes.stable if routes.stable and routes.stable != version else aliases.get(Alias.CHAMPION)
    elif record.state is RolloutState.CHAMPION:
        restored = aliases.get(Alias.PREVIOUS) if aliases.get(Alias.CHAMPION) == version else routes.stable
        if restored is None or restored == version:
            intent = record.last_event(Event.ROLLBACK_STARTED)
            restored = str(intent["d"]["restore"]) if intent else None
        if restored is None:
            raise RolloutError(f"version {version} is champion with no previous version to restore: roll forward")
    else:
        raise RolloutError(f"version {version} is {record.state.value}: only a canary or a champion can be "
                           "rolled back")
    if restored is None:
        raise RolloutError(f"no stable version to send the traffic of version {version} to")
    if not (moved and str(restored) in (str(routes.stable), str(getattr(routes, "holdback", None)))):
        # Users before bookkeeping: the traffic moves before anything is written.
        router.set_routes(str(restored), None, 0)
        log.warning("version %s: 100%% of traffic back on version %s (%s)", version, restored, reason)
    after = registry.rollback(version, reason, dict(evidence or {}), actor, dag_run_id)
    from mlcd.rollout import opsignals

    # mlcd_rollbacks_total on the gateways' /metrics, and the alert Connection through the Airflow listener.
    opsignals.record(opsignals.OpsEvent.ROLLBACK, version, f"{actor}: {reason}")
    registry.set_version_tags(version, {
        TAG_ROLLED_BACK_BY: actor,
        TAG_ROLLED_BACK_AT: now_iso(),
        TAG_ROLLBACK_CHECKS: ",".join(_failed_checks(evidence)) or "manual",
    })
    return RollbackResult(version, str(restored), False, after.state, reason)


def promote(registry: Registry, router: Router, version: str, reason: str, actor: str,
            dag_run_id: str | None = None) -> dict[str, Any]:
    """Promote ``version`` by hand (``champion`` ← version, ``previous`` ← old champion), then serve it alone."""
    record = registry.promote(str(version), actor, reason, dag_run_id, {"manual": True})
    router.set_routes(str(version), None, 0)
    return {"version": str(version), "state": record.state.value, "reason": reason}


def set_paused(registry: Registry, version: str, paused: bool, reason: str, actor: str,
               dag_run_id: str | None = None) -> dict[str, Any]:
    """Record a pause (the canary task holds its weight) or a resume, as an event in the rollout record."""
    record = registry.get_state(str(version))
    if record.state is not RolloutState.CANARY:
        raise ValueError(f"version {version} is {record.state.value}: only a canary in rollout can be "
                         f"{'paused' if paused else 'resumed'}")
    event = Event.PAUSED if paused else Event.RESUMED
    registry.record_event(str(version), event.value, {"reason": reason}, actor, dag_run_id)
    return {"version": str(version), "event": event.value, "reason": reason}


class ManualAction(str, Enum):
    """What an operator may ask by hand (``mlcd rollback|promote|pause|resume`` and ``mlcd_control``)."""

    ROLLBACK = "rollback"
    PROMOTE = "promote"
    PAUSE = "pause"
    RESUME = "resume"

    def __str__(self) -> str:
        return self.value


# Moving traffic or the champion by hand names its version: "the champion" as a silent default rolled back a
# healthy champion when someone meant a canary that had already finished. Holding a canary is reversible.
NEEDS_VERSION = frozenset({ManualAction.ROLLBACK, ManualAction.PROMOTE})


def default_version(registry: Registry, action: str) -> str:
    """The version a manual action means when none is given: only pause/resume have one (the canary)."""
    act = ManualAction(action)
    if act in NEEDS_VERSION:
        canary = _safe(lambda: registry.get_alias_version(Alias.CANARY))
        hint = f" (the canary is version {canary})" if canary else " (there is no canary)"
        raise ValueError(f"{act.value} needs an explicit version{hint}")
    canary = registry.get_alias_version(Alias.CANARY)
    if canary is not None:
        return str(canary)
    raise ValueError(f"no version given and no canary to {act.value}: pass a version")


def _safe(read: Any) -> Any:
    try:
        return read()
    except Exception:  # a description must not fail because one of its sources is down
        return None


def describe(action: str, registry: Registry, router: Router, version: str) -> str:
    """What :func:`manual` would do, in one sentence, changing nothing (``--dry-run``, the control form's dry run).

    Read from the router and the registry as they are now; a source that cannot be read is named, not guessed.
    """
    act = ManualAction(action)
    version = str(version)
    routes = _safe(router.get_routes)
    record = _safe(lambda: registry.get_state(version))
    aliases = _safe(registry.aliases) or {}
    serving = ("traffic now: " + (f"version {routes.stable} {100 - routes.canary_weight}%"
                                   + (f", canary {routes.canary} {routes.canary_weight}%" if routes.canary else ""))
               if routes is not None else "the router could not be read")
    state = record.state.value if record is not None else "unknown (the registry could not be read)"
    if act is ManualAction.ROLLBACK:
        if record is not None and record.state is RolloutState.CHAMPION:
            restore = aliases.get(Alias.PREVIOUS) or "the previous version (none recorded: this would be refused)"
            what = f"take champion {version} out of service and give 100% of traffic back to version {restore}"
        elif record is not None and record.state is RolloutState.ROLLED_BACK:
            what = f"only make sure no traffic reaches version {version} (it is already rolled back)"
        else:
            stable = routes.stable if routes is not None and routes.stable != version else aliases.get(Alias.CHAMPION)
            what = f"send 100% of traffic to version {stable}, remove version {version}'s canary alias and mark it rolled_back"
    elif act is ManualAction.PROMOTE:
        what = (f"make version {version} champion (champion {aliases.get(Alias.CHAMPION) or '-'} becomes previous) "
                f"and serve it alone")
    else:
        effect = "holds its weight" if act is ManualAction.PAUSE else "moves on"
        what = f"record a {act.value} of canary {version} (its rollout {effect})"
    return f"would {what}; version {version} is {state}; {serving}"


def manual(action: str, registry: Registry, router: Router, version: str | None, reason: str, actor: str,
           dag_run_id: str | None = None, dry_run: bool = False) -> dict[str, Any]:
    """One manual action as the CLI and ``mlcd_control`` both run it: checked, described, recorded with who asked.

    Args:
        action: a :class:`ManualAction` value.
        version: required for rollback and promote; pause/resume default to the canary.
        reason: why (recorded in the rollout record, prefixed ``manual:`` for rollback/promote).
        actor: who asked (``cli:<login>``, ``airflow-ui:<user>``).
        dry_run: only say what would be done (``{"dry_run": True, "plan": ...}``); nothing moves.

    Raises:
        ValueError: an unknown action, a missing version, an empty reason; plus what the action raises.
    """
    try:
        act = ManualAction(str(action))
    except ValueError:
        raise ValueError(f"unknown action {action!r} ({', '.join(a.value for a in ManualAction)})") from None
    if not str(reason or "").strip():
        raise ValueError("a reason is required (it is recorded in the rollout record)")
    target = str(version).strip() if version not in (None, "", "None") else default_version(registry, act.value)
    head = {"action": act.value, "version": target, "actor": actor}
    if dry_run:
        from mlcd.registry.retries import bounded_mlflow_retries

        with bounded_mlflow_retries():  # a registry that is down is said in the plan within seconds
            return {**head, "dry_run": True, "plan": describe(act.value, registry, router, target)}
    # Not described first: a rollback moves traffic before the registry is even asked (it may be down).
    if act is ManualAction.ROLLBACK:
        out = rollback(registry, router, target, f"manual: {reason}", {"manual": True, "asked_by": actor}, actor,
                       dag_run_id).as_dict()
    elif act is ManualAction.PROMOTE:
        out = promote(registry, router, target, f"manual: {reason}", actor, dag_run_id)
    else:
        out = set_paused(registry, target, act is ManualAction.PAUSE, reason, actor, dag_run_id)
    return {**head, **out, "dry_run": False}
