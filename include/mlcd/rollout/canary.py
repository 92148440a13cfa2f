"""One canary rollout, step by step, without Airflow: the operator and ``run_rollout`` both drive this.

Each step: read the rollout record (stop if the guard rolled the version back meanwhile), set the weight, scrape
the gateway; during the window, every ``poll_interval_s``, :func:`observe` feeds the interval since the last
scrape to the analysis engine the guard uses too (:class:`mlcd.rollout.analysis.Analysis`: errors, latency side by
side, predicted-class distribution, live accuracy; sequential, so a failure ends the window at once). After the
window: read the record again, judge, record the step, then advance, repeat (the window stretches: its counts
keep adding up at this weight), abort (traffic back to stable, version rolled back with the evidence), stop
undecided (not a failure: traffic back to stable, the version stays eligible) or promote after the last step.
The engine's state lives in the progress for the whole rollout, so alpha is spent once, not per step. The
progress is a JSON-able dict, so a deferred task carries it.

Fail closed (:mod:`mlcd.rollout.failsafe`): a scrape that fails, or finds the canary's series gone, is not judged;
once that lasts the spec's ``blind_s`` the canary goes to 0 % through the router (no registry needed), the rollout
is paused with the reason, and the task holds at 0 % (a pause never steps the weight back up) until a person
resumes it; it then starts again from the first step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from mlcd.registry.protocol import Registry
from mlcd.registry.state import RolloutRecord, RolloutState
from mlcd.registry.tags import TAG_ROLLBACK_REASON, Alias, Event
from mlcd.rollout.failsafe import METRICS_ERRORS, FailClosedReason, blind_for
from mlcd.rollout.metrics import (
    SeriesCounters,
    Snapshot,
    diff,
    fetch_metrics,
    snapshot_from_dict,
    snapshot_to_dict,
    variant_stats,
)
from mlcd.rollout.router import RouteConflict, Router, VersionRefused
from mlcd.rollout.spec import Action, Outcome, RolloutSpec, StepVerdict, next_action, next_weight

log = logging.getLogger(__name__)


def is_paused(record: RolloutRecord) -> bool:
    """True when the record's latest ``paused`` event is newer than its latest ``resumed`` (``mlcd pause``)."""
    paused, resumed = record.last_event(Event.PAUSED), record.last_event(Event.RESUMED)
    return paused is not None and (resumed is None or str(resumed.get("t", "")) < str(paused.get("t", "")))


class EndReason(str, Enum):
    """Why a rollout ended before promotion: the Airflow task switches on it (the message is for people)."""

    ROLLED_BACK = "rolled_back"  # the guard or a person rolled the version back (before or during the rollout)
    NOT_A_CANARY = "not_a_canary"  # the record says the version is no longer a canary
    ROUTES_MOVED = "routes_moved"  # someone else moved traffic: the rollout stops and leaves it there
    REFUSED = "refused"  # the gateway will not serve the version (rolled back with why)
    ANALYSIS_FAILED = "analysis_failed"  # the rollout's own analysis failed (rolled back with the evidence)
    UNDECIDED = "undecided"  # not enough evidence within the longest window: not a failure


class RolloutEnded(RuntimeError):
    """A rollout that ended before promotion; ``reason`` says why."""

    def __init__(self, message: str, reason: EndReason) -> None:
        super().__init__(message)
        self.reason = reason


class RolloutStopped(RolloutEnded):
    """The version was rolled back (by the guard or a person), or moved, while the rollout ran."""


class RolloutAborted(RolloutEnded):
    """The rollout's own analysis failed: traffic is back on stable and the version is rolled back."""


class RolloutUndecided(RolloutEnded):
    """The analysis could not decide within the longest window: stopped, not failed (the version stays eligible)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EndReason.UNDECIDED)


@dataclass
class RolloutProgress:
    """Where a rollout is; JSON-able so it survives a deferral.

    Attributes:
        version, stable: the canary and the version it is compared with.
        weight: the canary's weight now (percent).
        outcomes: every window's outcome so far.
        held: inconclusive windows at this weight (the window stretches).
        last: the last scrape (``snapshot_to_dict``): the next interval starts there.
        window: this weight's counters so far (``{"canary": …, "stable": …}``, ``SeriesCounters.to_dict``).
        analysis: the engine's state for the whole rollout.
        verdict: the engine's latest verdict (``GuardVerdict.as_dict``).
        window_started: when the current window began.
        blind_since: when the metrics became unreadable (or the canary's series vanished); ``None`` while read.
        fail_closed_at: when this rollout failed closed (ISO, as the record's times); it holds at 0 % until a
            ``resumed`` event newer than this.
    """

    version: str
    stable: str | None
    weight: int = 0
    outcomes: list[str] = field(default_factory=list)
    held: int = 0
    last: dict[str, Any] = field(default_factory=dict)
    window: dict[str, Any] = field(default_factory=dict)
    analysis: dict[str, Any] = field(default_factory=dict)
    verdict: dict[str, Any] | None = None
    window_started: float = 0.0
    repeat: bool = False
    done: bool = False
    result: str = ""
    blind_since: float | None = None
    fail_closed_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutProgress:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class StepResult:
    action: Action
    verdict: StepVerdict
    progress: RolloutProgress


def observe(spec: RolloutSpec, p: RolloutProgress, snap: Snapshot) -> Outcome:
    """Feed the interval since the last scrape to the engine; returns its outcome so far (pure: no I/O).

    The rollout sets the weight itself and holds it through the window, so the interval's stratum is that
    weight; the "100 %" step routes ``100 - holdback_pct`` (stable keeps the holdback), so it is judged
    canary-vs-stable like the others.
    """
    from mlcd.rollout.analysis import Analysis

    before = snapshot_from_dict(p.last)
    canary = diff(before.get(("canary", p.version)), snap.get(("canary", p.version)))
    stable = diff(before.get(("stable", str(p.stable))), snap.get(("stable", str(p.stable))))
    engine = Analysis(spec.guard_thresholds(), p.analysis or None)
    verdict = engine.update(canary, stable, spec.routed_weight(p.weight) / 100.0)
    p.analysis, p.last, p.verdict = engine.state, snapshot_to_dict(snap), verdict.as_dict()
    window = {k: SeriesCounters.from_dict(v) for k, v in p.window.items()}
    p.window = {"canary": (window.get("canary", SeriesCounters()) + canary).to_dict(),
                "stable": (window.get("stable", SeriesCounters()) + stable).to_dict()}
    return verdict.outcome


def note_scrape(spec: RolloutSpec, p: RolloutProgress, snap: Snapshot | None, now: float | None = None
                ) -> tuple[Snapshot | None, str]:
    """Blindness bookkeeping for one scrape (pure: no I/O); the trigger and :class:`CanaryRollout` share it.

    Args:
        snap: the scrape, or ``None`` when it failed.

    Returns:
        ``(snapshot to judge or None, why it is not usable)``; ``p.blind_since`` is set on the first unusable
        scrape and cleared by a usable one. A canary series present at the last scrape and gone now (a gateway
        restarted without its models) is unusable, never "no traffic".
    """
    now = time.time() if now is None else now
    why = ""
    if snap is None:
        why = FailClosedReason.METRICS_UNREADABLE.value
    elif ("canary", p.version) in snapshot_from_dict(p.last) and ("canary", p.version) not in snap:
        why = FailClosedReason.CANARY_SERIES_MISSING.value
    if why:
        if p.blind_since is None:
            p.blind_since = now
        return None, why
    p.blind_since = None
    return snap, ""


def blind_expired(spec: RolloutSpec, p: RolloutProgress, now: float | None = None) -> bool:
    """True once the metrics have been unusable for the spec's fail-closed window."""
    return p.blind_since is not None and blind_for(p.blind_since, time.time() if now is None else now) >= spec.blind_s


def window_outcome(spec: RolloutSpec, p: RolloutProgress) -> StepVerdict:
    """The step's verdict: the engine's, and a pass needs this weight's minimum traffic on both sides."""
    v = p.verdict or {"outcome": "inconclusive", "reasons": ["no poll yet"]}
    canary = variant_stats(SeriesCounters.from_dict(p.window.get("canary", {})))
    stable = variant_stats(SeriesCounters.from_dict(p.window.get("stable", {})))
    outcome, reasons = Outcome(v["outcome"]), list(v["reasons"])
    if outcome is Outcome.PASS:
        thin = []
        if canary.requests < spec.min_requests:
            thin.append(f"canary requests {canary.requests} < minimum {spec.min_requests} at {p.weight}%")
        if p.weight < 100 and stable.requests < spec.min_stable_requests:
            thin.append(f"stable requests {stable.requests} < minimum {spec.min_stable_requests} at {p.weight}%")
        if thin:
            outcome, reasons = Outcome.INCONCLUSIVE, thin
    return StepVerdict(outcome, tuple(reasons), canary, stable)


class CanaryRollout:
    """Drive one version from canary to champion.

    Args:
        registry: a :class:`mlcd.registry.ModelRegistry` (aliases and the rollout record).
        router: where weights are applied (local gateway or Kubernetes HTTPRoute).
        spec: steps, window and thresholds.
        metrics_url: the gateway whose ``/metrics`` is judged.
        actor, dag_run_id: who moves things, recorded with every entry.
        scrape: reads metrics (default: HTTP ``GET {metrics_url}/metrics``).
    """

    def __init__(
        self,
        registry: Registry,
        router: Router,
        spec: RolloutSpec,
        metrics_url: str,
        actor: str = "mlcd",
        dag_run_id: str | None = None,
        scrape: Callable[[str], Snapshot] = fetch_metrics,
    ):
        self.registry = registry
        self.router = router
        self.spec = spec
        self.metrics_url = metrics_url
        self.actor = actor
        self.dag_run_id = dag_run_id
        self.scrape = scrape
        self._paused = False
        self._blind_why = ""

    # -- record -------------------------------------------------------------------------------------------
    def _state(self, version: str) -> RolloutState:
        return self.registry.get_state(version).state

    def _check_record(self, p: RolloutProgress) -> bool:
        """Raise :class:`RolloutStopped` if rolled back; True when someone already promoted it by hand."""
        record = self.registry.get_state(p.version)
        state = record.state
        if state is RolloutState.ROLLED_BACK:
            reason = record.tags.get(TAG_ROLLBACK_REASON, "see the rollout record")
            raise RolloutStopped(f"version {p.version} was rolled back during the rollout: {reason}",
                                 EndReason.ROLLED_BACK)
        if state is RolloutState.CHAMPION:
            return True
        if state is not RolloutState.CANARY:
            raise RolloutStopped(f"version {p.version} is {state.value}, no longer a canary", EndReason.NOT_A_CANARY)
        # Read with the record: a pause holds the weight (mlcd pause, or this rollout failing closed, which
        # holds even when MLflow was down as it paused: until a resume newer than it).
        resumed = record.last_event(Event.RESUMED)
        if p.fail_closed_at and resumed is not None and str(resumed.get("t", "")) > p.fail_closed_at:
            p.fail_closed_at, p.blind_since = "", None  # resumed by a person: start again from the first step
        self._paused = is_paused(record) or bool(p.fail_closed_at)
        return False

    @property
    def paused(self) -> bool:
        """Paused (by a person, or failed closed): the weight is held."""
        return self._paused

    def _event(self, version: str, event: Event, details: dict[str, Any]) -> None:
        self.registry.record_event(version, event.value, details, actor=self.actor, dag_run_id=self.dag_run_id)

    # -- steps --------------------------------------------------------------------------------------------
    def start(self, version: str, reason: str) -> RolloutProgress:
        """Set the canary alias and route it at 0 %; a first model (no champion) is promoted directly."""
        version = str(version)
        state = self._state(version)
        if state is RolloutState.ROLLED_BACK:
            raise RolloutStopped(f"version {version} was already rolled back; it will not be canaried again",
                                 EndReason.ROLLED_BACK)
        champion = self.registry.get_alias_version(Alias.CHAMPION)
        if state is RolloutState.CHAMPION or champion == version:
            # Bootstrapped by the register task: make sure serving follows the registry (idempotent).
            self.router.set_routes(version, None, 0)
            return RolloutProgress(version, version, 100, done=True, result="already champion")
        if champion is None:
            self.registry.promote(version, self.actor, f"first model, nothing to canary against: {reason}",
                                  self.dag_run_id)
            self.router.set_routes(version, None, 0)
            return RolloutProgress(version, version, 100, done=True, result="bootstrapped as first champion")
        self.registry.start_canary(version, self.actor, reason, self.dag_run_id)
        try:
            self.router.set_routes(champion, version, 0)
        except VersionRefused as exc:
            # The gateway will never load it (e.g. a tampered artifact): a failed canary, rolled back with why.
            why = f"canary could not be served: {exc}"
            from mlcd.rollout.actions import rollback

            rollback(self.registry, self.router, version, why, {"refused": str(exc)}, self.actor, self.dag_run_id)
            raise RolloutAborted(why, EndReason.REFUSED) from None
        self._event(version, Event.CANARY_STARTED, {"stable": champion, "spec": self.spec.to_dict()})
        return RolloutProgress(version, champion)

    def begin_step(self, p: RolloutProgress) -> RolloutProgress:
        """Move to the next weight (or stay, for a stretched window) and take the window's first scrape."""
        if self._check_record(p):
            p.done, p.result = True, "promoted by someone else during the rollout"
            return p
        if self._paused:
            # A pause holds the weight the router has now: after failing closed that is 0 %, and stepping back to
            # the progress' weight would undo it.
            target = self._routed_weight(p)
        else:
            stay = p.repeat and p.weight > 0
            step = p.weight if stay else next_weight(self.spec, p.weight)
            if step is None:
                raise ValueError(f"rollout of {p.version} is past its last step")
            target = step
            self._move(p, target)
        if target != p.weight:
            p.window, p.held = {}, 0  # a new weight: its own counts (a stretched window keeps adding up)
        p.weight, p.repeat = target, False
        # The interval starts after the weight is set: each window is one stratum at one weight.
        snap = self._scrape(p)
        if snap is not None:
            p.last = snapshot_to_dict(snap)
        p.window_started = time.time()  # this window's start: the trigger waits a full window from here
        log.info("canary %s at %d%% (stable %s), window %.0fs", p.version, target, p.stable,
                 self.spec.analysis_window_s)
        return p

    def _move(self, p: RolloutProgress, target: int) -> None:
        """Set the canary's weight only while the routes are still this rollout's (compare-and-set).

        A rollback (guard, ``mlcd rollback``) or a person may move traffic between the record check and this
        move; the router's generation makes that race visible, and the rollout stops instead of undoing them.
        """
        routes = self.router.get_routes()
        if routes.canary != p.version or routes.stable != str(p.stable):
            raise RolloutStopped(f"routes moved during the rollout (stable {routes.stable}, canary {routes.canary}): "
                                 f"canary {p.version} is no longer routed; traffic left where it is", EndReason.ROUTES_MOVED)
        try:
            self.router.set_routes(str(p.stable), p.version, self.spec.routed_weight(target),
                                   expected_generation=routes.generation)
        except RouteConflict as exc:
            raise RolloutStopped(f"routes moved while canary {p.version} stepped to {target}%: {exc}; "
                                 "traffic left where it is", EndReason.ROUTES_MOVED) from None

    def _routed_weight(self, p: RolloutProgress) -> int:
        """The canary's weight as routed now (a paused rollout holds it); stop if it is no longer routed."""
        routes = self.router.get_routes()
        if routes.canary != p.version or routes.stable != str(p.stable):
            raise RolloutStopped(f"routes moved during the rollout (stable {routes.stable}, canary {routes.canary}): "
                                 f"canary {p.version} is no longer routed; traffic left where it is", EndReason.ROUTES_MOVED)
        return int(routes.canary_weight)

    def _scrape(self, p: RolloutProgress) -> Snapshot | None:
        """Scrape once; ``None`` (and fail closed once blind too long) when the metrics cannot be used."""
        try:
            snap: Snapshot | None = self.scrape(self.metrics_url)
        except METRICS_ERRORS as exc:
            log.warning("canary %s: metrics of %s unreadable: %s: %s", p.version, self.metrics_url,
                        type(exc).__name__, exc)
            snap = None
        usable, why = note_scrape(self.spec, p, snap)
        if usable is None:
            self._blind_why = why
            if blind_expired(self.spec, p) and not p.fail_closed_at:
                self._fail_closed(p, why)
        return usable

    def _fail_closed(self, p: RolloutProgress, why: str) -> None:
        """Canary to 0 % (router only), rollout paused with the reason; the task then holds while paused."""
        from mlcd.registry.base import now_iso
        from mlcd.rollout.failsafe import fail_closed

        blind = blind_for(p.blind_since, time.time())
        reason = (f"{why}: canary {p.version}'s metrics at {self.metrics_url} unusable for {blind:.0f}s "
                  f"(>= {self.spec.blind_s:.0f}s) at {p.weight}%: failed closed, canary at 0%, rollout paused")
        done = fail_closed(self.router, self.registry, p.version, reason, self.actor, self.dag_run_id)
        if not done.traffic_safe:
            # Neither metrics nor router: nothing here can make traffic safe; the task's retry tries again.
            raise RuntimeError(f"{reason}; but {done.error}")
        p.fail_closed_at, p.weight, p.repeat, self._paused = now_iso(), 0, False, True
        p.window, p.held = {}, 0
        log.warning("%s%s", reason, f" ({done.error})" if done.error else "")

    def poll(self, p: RolloutProgress) -> Outcome:
        """One scrape within the window (``run_rollout`` and the window trigger call this every poll)."""
        snap = self._scrape(p)
        if snap is None:
            return Outcome.INCONCLUSIVE  # no data is never a pass; blind for long enough: failed closed
        return observe(self.spec, p, snap)

    def finish_step(self, p: RolloutProgress) -> StepResult:
        """Judge the window that began in :meth:`begin_step`, record it, and act on the verdict."""
        if self._check_record(p):
            p.done, p.result = True, "promoted by someone else during the rollout"
            verdict = StepVerdict(Outcome.PASS, ("promoted by hand during the rollout",))
            return StepResult(Action.ADVANCE, verdict, p)
        if self._paused:
            # Paused by a person: the window is neither judged nor counted; the next step holds the weight.
            self._event(p.version, Event.CANARY_STEP_HELD, {"weight": p.weight})
            p.repeat = True
            why = f"failed closed at {p.fail_closed_at}, " if p.fail_closed_at else ""
            held = StepVerdict(Outcome.INCONCLUSIVE, (f"{why}paused at {p.weight}%: weight held until resumed",))
            return StepResult(Action.REPEAT, held, p)
        self.poll(p)
        if self._paused:  # the window's last scrape found the metrics blind too long: failed closed, hold at 0 %
            self._event(p.version, Event.CANARY_STEP_HELD, {"weight": p.weight, "fail_closed": True})
            p.repeat = True
            held = StepVerdict(Outcome.INCONCLUSIVE, (f"failed closed ({self._blind_why}): canary at 0%, "
                                                      "rollout paused",))
            return StepResult(Action.REPEAT, held, p)
        verdict = window_outcome(self.spec, p)
        p.outcomes.append(verdict.outcome.value)
        if verdict.outcome is Outcome.INCONCLUSIVE:
            p.held += 1
        action = next_action(self.spec, p.outcomes, p.held)
        elapsed = time.time() - p.window_started
        self._event(p.version, Event.CANARY_STEP, {
            "weight": p.weight, "window_s": round(elapsed, 1), "action": action.value, **verdict.to_dict(),
            "analysis": _evidence(p.verdict), "mix": window_mix(p.window),
        })
        log.info("canary %s at %d%%: %s → %s (%s)", p.version, p.weight, verdict.outcome.value, action.value,
                 "; ".join(verdict.reasons))
        if action is Action.ABORT_FAILED:
            self._abort(p, verdict)
        if action is Action.ABORT_INCONCLUSIVE:
            self._undecided(p, verdict)
        if action is Action.REPEAT:
            p.repeat = True
        elif next_weight(self.spec, p.weight) is None:
            self._promote(p, verdict)
        return StepResult(action, verdict, p)

    def _abort(self, p: RolloutProgress, verdict: StepVerdict) -> None:
        reason = f"canary failed its analysis at {p.weight}%: " + "; ".join(verdict.reasons)
        # The one rollback the guard and people use too: traffic first (users before bookkeeping), then the record.
        from mlcd.rollout.actions import rollback

        rollback(self.registry, self.router, p.version, reason,
                 {"outcomes": p.outcomes, "last": verdict.to_dict(), "verdict": p.verdict},
                 self.actor, self.dag_run_id)
        p.done, p.result = True, reason
        raise RolloutAborted(reason, EndReason.ANALYSIS_FAILED)

    def _undecided(self, p: RolloutProgress, verdict: StepVerdict) -> None:
        """Not enough evidence within the longest window: stop without failing the version."""
        retreat = self.spec.on_undecided == "retreat"
        if retreat:
            self.router.set_routes(str(p.stable), None, 0)  # users back on the version that is known to work
        reason = (f"canary undecided at {p.weight}% after {p.held} windows "
                  f"({self.spec.max_window_s:.0f}s): " + "; ".join(verdict.reasons)
                  + ("; traffic back on stable" if retreat else f"; weight held at {p.weight}%")
                  + f"; version {p.version} stays a canary, eligible for another rollout")
        self._event(p.version, Event.CANARY_UNDECIDED, {"weight": p.weight, "reason": reason,
                                                    "analysis": _evidence(p.verdict)})
        p.done, p.result = True, reason
        raise RolloutUndecided(reason)

    def _promote(self, p: RolloutProgress, verdict: StepVerdict) -> None:
        # The routes are read before the registry moves and set compare-and-set after: a rollback (the guard, a
        # separate DAG) that lands in between has moved traffic to stable, and it must not be undone here.
        routes = self.router.get_routes()
        if routes.canary != p.version or routes.stable != str(p.stable):
            raise RolloutStopped(f"routes moved before canary {p.version} was promoted (stable {routes.stable}, "
                                 f"canary {routes.canary}): not promoted; traffic left where it is", EndReason.ROUTES_MOVED)
        self.registry.promote(p.version, self.actor, f"canary passed {len(p.outcomes)} analysis windows",
                              self.dag_run_id, {"outcomes": p.outcomes, "last": verdict.to_dict()})
        held = self.spec.holdback_pct if p.stable and str(p.stable) != p.version else 0
        try:
            if held:  # the old champion stays on a small share: the bake's concurrent control (the guard)
                self.router.set_routes(p.version, None, 0, expected_generation=routes.generation,
                                       holdback=str(p.stable), holdback_weight=held)
            else:
                self.router.set_routes(p.version, None, 0, expected_generation=routes.generation)
        except RouteConflict as exc:
            raise RolloutStopped(f"routes moved while canary {p.version} was promoted: {exc}; traffic left where "
                                 "the other writer put it (reconcile and the guard settle the registry)",
                                 EndReason.ROUTES_MOVED) from None
        p.done, p.result = True, f"promoted to champion after {len(p.outcomes)} windows"
        if held:
            self._event(p.version, Event.HOLDBACK_STARTED, {"holdback": str(p.stable), "holdback_weight": held})


def window_mix(window: dict[str, Any]) -> dict[str, Any]:
    """Each variant's predicted-class counts and feedback counts in the window, for the operator's chart.

    Counts, not shares, so a reader can weigh a window by its traffic; about 30 numbers, well within the record's
    size limit (the engine's per-class shares are left out by :func:`_evidence`).
    """
    out: dict[str, Any] = {}
    for side in ("canary", "stable"):
        c = SeriesCounters.from_dict(window.get(side, {}))
        out[side] = {"classes": {str(k): int(round(v)) for k, v in sorted(c.classes.items()) if v},
                     "feedback_correct": int(round(c.feedback_correct)), "feedback_total": int(round(c.feedback_total))}
    return out


def _evidence(verdict: dict[str, Any] | None) -> dict[str, Any]:
    """The engine's verdict without the bulky per-class shares (the record has a size limit)."""
    if not verdict:
        return {}
    return {"outcome": verdict.get("outcome"), "look": verdict.get("look"),
            "checks": [{k: c.get(k) for k in ("name", "outcome", "p_value", "alpha", "effect")}
                       for c in verdict.get("checks", [])]}


def run_rollout(rollout: CanaryRollout, version: str, reason: str, sleep: Callable[[float], None] = time.sleep
                ) -> RolloutProgress:
    """Walk the whole rollout in this process (CLI, demo, tests); the Airflow operator defers instead."""
    p = rollout.start(version, reason)
    while not p.done:
        p = rollout.begin_step(p)
        if p.done:
            break
        waited = 0.0
        while waited + rollout.spec.poll_interval_s < rollout.spec.analysis_window_s:
            sleep(rollout.spec.poll_interval_s)
            waited += rollout.spec.poll_interval_s
            if rollout.poll(p) is Outcome.FAIL or rollout.paused:
                break  # overwhelming evidence, or failed closed: finish the window now
        else:
            sleep(rollout.spec.analysis_window_s - waited)
        p = rollout.finish_step(p).progress
    return p


def rollout_from_settings(spec: RolloutSpec, actor: str = "mlcd", dag_run_id: str | None = None,
                          gateway_url: str | None = None, tracking_uri: str | None = None,
                          model_name: str | None = None, registry: Registry | None = None) -> CanaryRollout:
    """A rollout wired from ``MLCD_*`` settings (router backend, gateway URL) and ``registry`` (the Airflow task
    passes the one its MLflow Connection builds), else a registry on ``tracking_uri`` / the settings."""
    from mlcd.registry import ModelRegistry
    from mlcd.rollout.providers import counters_from_settings
    from mlcd.rollout.router import router_from_settings
    from mlcd.settings import get_settings

    s = get_settings()
    url = gateway_url or s.gateway_url
    if registry is None:
        registry = ModelRegistry(tracking_uri or s.tracking_uri, model_name or s.model_name)
    # The counters come from MLCD_METRICS_PROVIDER: the gateway's own /metrics, or Prometheus on a cluster.
    return CanaryRollout(registry, router_from_settings(url), spec, url, actor, dag_run_id,
                         scrape=counters_from_settings())
