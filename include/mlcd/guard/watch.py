"""The guard's moving parts without Airflow: one poll of the gateway, and what a rollback does.

A guard run watches one version from the moment it is served as a canary until it is either rolled back, or
promoted and healthy through a bake period. Each :meth:`Guard.poll` scrapes the gateway's ``/metrics`` once and
feeds the *interval since the previous poll* (canary and stable, same interval, with the canary weight the
gateway reports) to the analysis engine (:class:`mlcd.guard.judge.Analysis`), the same engine every canary step
and ``mlcd watch`` use. The engine's sequential test keeps the false-rollback rate of the whole run below
``alpha`` however many polls it takes. The decision is one of :class:`Decision`:

* ``watch``: keep polling (no version yet, too little data, or pass/inconclusive so far);
* ``healthy``: done (bake period over with enough data and no failure, no canary within the grace period, or
  the version left serving without the guard: the rollout aborted it or a person moved it);
* ``unverified``: the bake period ended without enough traffic to say anything: not healthy, not broken;
* ``breach``: the engine failed the version; the verdict (every statistic, count and p-value) is the evidence.

Which version and phase is read from the gateway itself (``mlcd_gateway_model_info{variant, version}``), so a
poll needs no registry call. After promotion (the watched version serves as ``stable`` alone) nothing is served
concurrently, so the engine compares the version's errors and predicted classes with what the old champion
served concurrently during the canary phase, and latency is not judged.

The state between polls is a JSON-able dict (:class:`GuardState`, the engine's state included), so a trigger
serialises it and a restart continues the same test instead of starting a fresh one.

:func:`rollback` takes traffic back: it routes 100 % to stable through the :class:`~mlcd.rollout.router.Router`
*first* (users before bookkeeping), then moves the registry (``canary`` alias removed, or ``champion`` given
back to ``previous``), marks the version ``rolled_back`` with the evidence and tags who did it. A second
rollback of the same version only makes sure no traffic reaches it.

Where a poll reads is a :class:`mlcd.rollout.providers.MetricsProvider` (:func:`scrape_from_settings`): the
gateway's own ``/metrics`` (default), or Prometheus on a cluster with one gateway Deployment per variant.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from mlcd.guard.judge import (
    CLASSES_VS_REFERENCE,
    ERROR_VS_REFERENCE,
    LATENCY,
    Analysis,
    GuardThresholds,
    GuardVerdict,
)
from mlcd.rollout.metrics import (
    SeriesCounters,
    diff,
    snapshot_from_dict,
    snapshot_to_dict,
)

# One read of the metrics lives with the providers (the canary task reads through them too); re-exported here.
from mlcd.rollout.providers import MetricsUnavailable as MetricsUnavailable
from mlcd.rollout.providers import Scrape as Scrape
from mlcd.rollout.providers import fetch_scrape as fetch_scrape
from mlcd.rollout.providers import parse_scrape as parse_scrape
from mlcd.rollout.providers import scrape_from_families as scrape_from_families
from mlcd.rollout.router import Router
from mlcd.rollout.spec import Outcome

log = logging.getLogger(__name__)

STABLE, CANARY = "stable", "canary"
ACTOR = "mlcd_guard"
TAG_ROLLED_BACK_BY = "mlcd.rolled_back_by"
TAG_ROLLED_BACK_AT = "mlcd.rolled_back_at"
TAG_ROLLBACK_CHECKS = "mlcd.rollback_checks"
PAUSED_EVENT, RESUMED_EVENT = "paused", "resumed"


class Decision(str, Enum):
    """What the guard does after a poll."""

    WATCH = "watch"
    HEALTHY = "healthy"
    UNVERIFIED = "unverified"
    BREACH = "breach"


class Phase(str, Enum):
    """Where the watched version is."""

    WAITING = "waiting"  # not served yet (the canary task has not started it)
    CANARY = "canary"  # served as the canary variant
    BAKE = "bake"  # promoted: served as stable, within the bake period


@dataclass(frozen=True)
class GuardConfig:
    """One guard run's settings (operator arguments / DAG params).

    Attributes:
        gateway_url: the gateway whose ``/metrics`` is polled.
        version: the version to watch; ``None`` watches whichever canary the gateway serves first.
        poll_interval_s: seconds between polls.
        bake_s: after promotion, how long the new champion is still watched.
        grace_s: with no canary served for this long after the guard started, there is nothing to watch.
        thresholds: the engine's limits.
    """

    gateway_url: str
    version: str | None = None
    poll_interval_s: float = 2.0
    bake_s: float = 300.0
    grace_s: float = 300.0
    thresholds: GuardThresholds = field(default_factory=GuardThresholds)

    def __post_init__(self) -> None:
        if self.poll_interval_s <= 0 or self.bake_s < 0 or self.grace_s < 0:
            raise ValueError("poll_interval_s must be > 0, bake_s and grace_s >= 0")
        if self.version is not None:
            object.__setattr__(self, "version", str(self.version))


@dataclass
class GuardState:
    """Everything a guard run remembers between polls (JSON-able: a trigger carries it).

    Attributes:
        started_at: when the guard run began (epoch seconds).
        phase: waiting / canary / bake.
        version: the watched version (``None`` until a canary is seen).
        stable: the version it is compared with (the champion when the canary appeared).
        look: polls so far that brought the engine new information.
        polls: polls judged so far.
        last: the previous poll's counters (``snapshot_to_dict`` form): the next interval starts there.
        last_weight: the canary weight (0–1) the gateway reported at the previous poll.
        analysis: the engine's state (evidence so far, samples, looks).
        promoted_at: when the version was first seen serving as stable.
        bake_requests: requests the version served alone in the bake period.
        failures: consecutive failed scrapes.
    """

    started_at: float = field(default_factory=time.time)
    phase: str = Phase.WAITING.value
    version: str | None = None
    stable: str | None = None
    look: int = 0
    polls: int = 0
    last: dict[str, Any] = field(default_factory=dict)
    last_weight: float | None = None
    analysis: dict[str, Any] = field(default_factory=dict)
    promoted_at: float | None = None
    bake_requests: float = 0.0
    failures: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> GuardState:
        if not data:
            return cls()
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in dict(data).items() if k in known})


@dataclass(frozen=True)
class PollResult:
    """One poll's outcome.

    Attributes:
        decision: watch / healthy / unverified / breach.
        reason: one line for the log and the event.
        state: the state for the next poll.
        verdict: the engine's verdict (``None`` when nothing was judged).
    """

    decision: Decision
    reason: str
    state: GuardState
    verdict: GuardVerdict | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON-able payload a trigger event and an XCom carry (the rollback's evidence)."""
        return {
            "decision": self.decision.value,
            "reason": self.reason,
            "version": self.state.version,
            "stable": self.state.stable,
            "phase": self.state.phase,
            "look": self.state.look,
            "elapsed_s": round(time.time() - self.state.started_at, 1),
            "verdict": self.verdict.as_dict() if self.verdict is not None else None,
        }


def scrape_from_settings() -> Callable[[str], Scrape]:
    """The reader deploy-wide settings ask for (``MLCD_METRICS_PROVIDER``: the gateway's ``/metrics`` or
    Prometheus; see :mod:`mlcd.rollout.providers`)."""
    from mlcd.rollout import providers

    return providers.scrape_from_settings()


def add_counters(a: SeriesCounters | None, b: SeriesCounters | None) -> SeriesCounters:
    """The sum of two periods' counters (``None`` counts as empty)."""
    return (a or SeriesCounters()) + (b or SeriesCounters())


class Guard:
    """Polls one gateway and judges one version (see the module docstring).

    Args:
        config: what to watch and how.
        scrape: reads the gateway (default: HTTP ``GET /metrics``); tests and the bench pass a simulated one.
        clock: epoch seconds (injectable so phases can be reasoned about; defaults to ``time.time``).
    """

    def __init__(
        self,
        config: GuardConfig,
        scrape: Callable[[str], Scrape] = fetch_scrape,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.scrape = scrape
        self.clock = clock

    def poll(self, state: GuardState | None = None) -> PollResult:
        """Scrape once and decide; the returned state goes into the next call."""
        state = GuardState.from_dict(state.to_dict()) if state else GuardState(started_at=self.clock())
        scrape = self.scrape(self.config.gateway_url)  # errors propagate: the caller counts failures
        state.failures = 0
        now = self.clock()
        served = scrape.served
        canary_v, stable_v = served.get(CANARY), served.get(STABLE)
        last = snapshot_from_dict(state.last)
        last_weight = state.last_weight
        state.last, state.last_weight = snapshot_to_dict(scrape.counters), scrape.canary_weight

        if state.phase == Phase.WAITING.value:
            wanted = self.config.version
            if canary_v is not None and (wanted is None or canary_v == wanted):
                state.phase, state.version, state.stable = Phase.CANARY.value, canary_v, stable_v
                return PollResult(Decision.WATCH, f"canary {canary_v} seen next to stable {stable_v}: first "
                                  "interval starts now", state)
            if wanted is not None and stable_v == wanted and canary_v is None:
                # Promoted before the guard ever saw it as a canary (skip_canary, or a very late start).
                state.version, state.stable = wanted, None
                state.phase, state.promoted_at = Phase.BAKE.value, now
                return PollResult(Decision.WATCH, f"version {wanted} already champion: baking", state)
            if now - state.started_at >= self.config.grace_s:
                what = f"version {wanted}" if wanted else "a canary"
                return PollResult(Decision.HEALTHY, f"no_canary: {what} was not served within "
                                  f"{self.config.grace_s:.0f}s: nothing to watch", state)
            return PollResult(Decision.WATCH, "waiting for a canary", state)

        v = str(state.version)
        if state.phase == Phase.CANARY.value:
            if canary_v == v:
                canary = diff(last.get((CANARY, v)), scrape.counters.get((CANARY, v)))
                stable = diff(last.get((STABLE, str(state.stable))), scrape.counters.get((STABLE, str(state.stable))))
                # The reported weight is the interval's stratum only when it did not change within it.
                weight = scrape.canary_weight if last_weight is not None and last_weight == scrape.canary_weight \
                    else None
                return self._judge(state, canary, stable, weight, "canary")
            if stable_v == v:
                state.phase, state.promoted_at = Phase.BAKE.value, now
                log.info("version %s promoted: bake period of %.0fs", v, self.config.bake_s)
                return PollResult(Decision.WATCH, f"version {v} promoted: baking for {self.config.bake_s:.0f}s",
                                  state)
            return PollResult(Decision.HEALTHY, f"version_retired: version {v} is no longer served (the rollout "
                              "aborted it or a person moved it): nothing left to guard", state)

        # Bake: the version serves as stable alone; the engine compares it with what the old champion served
        # concurrently in the canary phase (latency is not judged: nothing runs side by side any more).
        if stable_v != v:
            return PollResult(Decision.HEALTHY, f"version_retired: version {v} is no longer the served champion "
                              f"(stable is {stable_v})", state)
        alone = diff(last.get((STABLE, v)), scrape.counters.get((STABLE, v)))
        state.bake_requests += alone.requests
        result = self._judge(state, alone, SeriesCounters(), None, "champion", skip=(LATENCY,))
        if result.decision is Decision.WATCH and now - (state.promoted_at or now) >= self.config.bake_s:
            t = self.config.thresholds
            if state.bake_requests < t.min_requests:
                return PollResult(Decision.UNVERIFIED, f"bake_unverified: version {v} served "
                                  f"{int(state.bake_requests)} requests in its {self.config.bake_s:.0f}s bake period "
                                  f"(< {t.min_requests} needed): not verified healthy", result.state, result.verdict)
            # Healthy means the bake's own checks (errors and predicted classes against what the old champion
            # served) passed on enough data: requests alone, or a bake with no reference, prove nothing.
            outcomes = {ch.name: ch for ch in (result.verdict.checks if result.verdict else ())}
            unproven = [f"{name}: {outcomes[name].reason}" if name in outcomes else f"{name}: no reference to "
                        "compare with (the guard never saw the old champion serve)"
                        for name in (ERROR_VS_REFERENCE, CLASSES_VS_REFERENCE)
                        if name not in outcomes or outcomes[name].outcome is not Outcome.PASS]
            if unproven:
                return PollResult(Decision.UNVERIFIED, f"bake_unverified: version {v} served "
                                  f"{int(state.bake_requests)} requests in its {self.config.bake_s:.0f}s bake period "
                                  "but was not shown healthy: " + "; ".join(unproven), result.state, result.verdict)
            return PollResult(Decision.HEALTHY, f"bake_complete: version {v} healthy for "
                              f"{self.config.bake_s:.0f}s after promotion ({int(state.bake_requests)} requests)",
                              result.state, result.verdict)
        return result

    def _judge(self, state: GuardState, canary: SeriesCounters, stable: SeriesCounters, weight: float | None,
               role: str, skip: tuple[str, ...] = ()) -> PollResult:
        engine = Analysis(self.config.thresholds, state.analysis or None)
        verdict = engine.update(canary, stable, weight, skip=skip)
        state.analysis = engine.state
        state.polls += 1
        state.look = int(engine.state["looks"])
        if verdict.outcome is Outcome.FAIL:
            return PollResult(Decision.BREACH, f"{role} version {state.version} failed: "
                              + "; ".join(verdict.reasons), state, verdict)
        return PollResult(Decision.WATCH, f"look {state.look}: {verdict.summary}", state, verdict)


def watch(guard: Guard, timeout_s: float = 3600.0, sleep: Callable[[float], None] = time.sleep,
          max_failures: int = 5, on_poll: Callable[[PollResult], None] | None = None) -> PollResult:
    """Poll until a decision (the CLI, the bench and tests; the Airflow trigger runs its own async loop).

    A scrape that fails is retried up to ``max_failures`` times in a row (a gateway restarting mid-rollout);
    then the error propagates. ``timeout_s`` bounds the whole watch (``TimeoutError``).
    """
    state: GuardState | None = None
    deadline = time.monotonic() + timeout_s
    failures = 0
    while True:
        try:
            result = guard.poll(state)
            failures = 0
        except OSError:
            failures += 1
            if failures >= max_failures:
                raise
            sleep(guard.config.poll_interval_s)
            continue
        if on_poll is not None:
            on_poll(result)
        if result.decision is not Decision.WATCH:
            return result
        state = result.state
        if time.monotonic() >= deadline:
            raise TimeoutError(f"guard still watching version {state.version} after {timeout_s:.0f}s")
        sleep(guard.config.poll_interval_s)


# --- actions: rollback, promote, pause -----------------------------------------------------------------------


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
    state: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _failed_checks(evidence: Mapping[str, Any] | None) -> list[str]:
    verdict = (evidence or {}).get("verdict") or evidence or {}
    return [c["name"] for c in verdict.get("checks", []) if c.get("outcome") == "fail"]


def rollback(
    registry: Any,
    router: Router,
    version: str,
    reason: str,
    evidence: Mapping[str, Any] | None = None,
    actor: str = ACTOR,
    dag_run_id: str | None = None,
) -> RollbackResult:
    """Take ``version`` out of service: traffic first, then the registry, then tags. Idempotent.

    Args:
        registry: a :class:`mlcd.registry.ModelRegistry`.
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
    if moved:
        # Users before bookkeeping, before the registry is even asked: a served canary goes back to the stable
        # version the router already holds, so this step needs no MLflow (it may be down: that is often why).
        router.set_routes(str(routes.stable), None, 0)
        log.warning("version %s: 100%% of traffic back on version %s (%s)", version, routes.stable, reason)
    # Each registry call gives up in seconds (MLflow's own default retries for minutes); a failure here leaves
    # traffic safe and the task's retry (or `mlcd reconcile`) completes the record.
    with bounded_mlflow_retries():
        return _rollback_record(registry, router, version, reason, evidence, actor, dag_run_id, routes, moved)


def _rollback_record(registry: Any, router: Router, version: str, reason: str, evidence: Mapping[str, Any] | None,
                     actor: str, dag_run_id: str | None, routes: Any, moved: bool) -> RollbackResult:
    from mlcd.registry.client import now_iso
    from mlcd.registry.errors import RolloutError
    from mlcd.registry.state import RolloutState

    record = registry.get_state(version)
    aliases = registry.aliases()
    if record.state is RolloutState.ROLLED_BACK:
        restored = routes.stable if routes.stable != version else aliases.get("champion")
        if version in (routes.stable, routes.canary) and restored and restored != version:
            router.set_routes(restored, None, 0)  # the record says rolled back: serving must agree
        return RollbackResult(version, restored, True, record.state.value, record.tags.get(
            "mlcd.rollback_reason", reason))
    if record.state is RolloutState.CANARY:
        restored = routes.stable if routes.stable and routes.stable != version else aliases.get("champion")
    elif record.state is RolloutState.CHAMPION:
        restored = aliases.get("previous") if aliases.get("champion") == version else routes.stable
        if restored is None or restored == version:
            intent = record.last_event("rollback_started")
            restored = str(intent["d"]["restore"]) if intent else None
        if restored is None:
            raise RolloutError(f"version {version} is champion with no previous version to restore: roll forward")
    else:
        raise RolloutError(f"version {version} is {record.state.value}: only a canary or a champion can be "
                           "rolled back")
    if restored is None:
        raise RolloutError(f"no stable version to send the traffic of version {version} to")
    if not (moved and str(restored) == str(routes.stable)):
        # Users before bookkeeping: the traffic moves before anything is written.
        router.set_routes(str(restored), None, 0)
        log.warning("version %s: 100%% of traffic back on version %s (%s)", version, restored, reason)
    after = registry.rollback(version, reason, dict(evidence or {}), actor, dag_run_id)
    registry.set_version_tags(version, {
        TAG_ROLLED_BACK_BY: actor,
        TAG_ROLLED_BACK_AT: now_iso(),
        TAG_ROLLBACK_CHECKS: ",".join(_failed_checks(evidence)) or "manual",
    })
    return RollbackResult(version, str(restored), False, after.state.value, reason)


def promote(registry: Any, router: Router, version: str, reason: str, actor: str,
            dag_run_id: str | None = None) -> dict[str, Any]:
    """Promote ``version`` by hand (``champion`` ← version, ``previous`` ← old champion), then serve it alone."""
    record = registry.promote(str(version), actor, reason, dag_run_id, {"manual": True})
    router.set_routes(str(version), None, 0)
    return {"version": str(version), "state": record.state.value, "reason": reason}


def set_paused(registry: Any, version: str, paused: bool, reason: str, actor: str,
               dag_run_id: str | None = None) -> dict[str, Any]:
    """Record a pause (the canary task holds its weight) or a resume, as an event in the rollout record."""
    from mlcd.registry.state import RolloutState

    record = registry.get_state(str(version))
    if record.state is not RolloutState.CANARY:
        raise ValueError(f"version {version} is {record.state.value}: only a canary in rollout can be "
                         f"{'paused' if paused else 'resumed'}")
    event = PAUSED_EVENT if paused else RESUMED_EVENT
    registry.record_event(str(version), event, {"reason": reason}, actor, dag_run_id)
    return {"version": str(version), "event": event, "reason": reason}


def default_version(registry: Any, action: str) -> str:
    """The version a manual action means when none is given: the canary, else (rollback) the champion."""
    canary = registry.get_alias_version("canary")
    if canary is not None:
        return str(canary)
    if action == "rollback":
        champion = registry.get_alias_version("champion")
        if champion is not None:
            return str(champion)
    raise ValueError(f"no version given and no canary{' or champion' if action == 'rollback' else ''} "
                     f"to {action}: pass a version")
