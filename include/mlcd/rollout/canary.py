"""One canary rollout, step by step, without Airflow: the operator and ``run_rollout`` both drive this.

Each step: read the rollout record (stop if the guard rolled the version back meanwhile), set the weight, scrape
the gateway; during the window, every ``poll_interval_s``, :func:`observe` feeds the interval since the last
scrape to the analysis engine the guard uses too (:class:`mlcd.guard.judge.Analysis`: errors, latency side by
side, predicted-class distribution, live accuracy; sequential, so a failure ends the window at once). After the
window: read the record again, judge, record the step, then advance, repeat (the window stretches: its counts
keep adding up at this weight), abort (traffic back to stable, version rolled back with the evidence), stop
undecided (not a failure: traffic back to stable, the version stays eligible) or promote after the last step.
The engine's state lives in the progress for the whole rollout, so alpha is spent once, not per step. The
progress is a JSON-able dict, so a deferred task carries it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

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


def is_paused(record: Any) -> bool:
    """True when the record's latest ``paused`` event is newer than its latest ``resumed`` (``mlcd pause``)."""
    paused, resumed = record.last_event("paused"), record.last_event("resumed")
    return paused is not None and (resumed is None or str(resumed.get("t", "")) < str(paused.get("t", "")))


class RolloutStopped(RuntimeError):
    """The version was rolled back (by the guard or a person) while the rollout ran."""


class RolloutAborted(RuntimeError):
    """The rollout's own analysis failed: traffic is back on stable and the version is rolled back."""


class RolloutUndecided(RuntimeError):
    """The analysis could not decide within the longest window: stopped, not failed (the version stays eligible)."""


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
    weight; at 100 % stable serves nothing and the engine compares with what stable served before.
    """
    from mlcd.guard.judge import Analysis

    before = snapshot_from_dict(p.last)
    canary = diff(before.get(("canary", p.version)), snap.get(("canary", p.version)))
    stable = diff(before.get(("stable", str(p.stable))), snap.get(("stable", str(p.stable))))
    engine = Analysis(spec.guard_thresholds(), p.analysis or None)
    verdict = engine.update(canary, stable, p.weight / 100.0)
    p.analysis, p.last, p.verdict = engine.state, snapshot_to_dict(snap), verdict.as_dict()
    window = {k: SeriesCounters.from_dict(v) for k, v in p.window.items()}
    p.window = {"canary": (window.get("canary", SeriesCounters()) + canary).to_dict(),
                "stable": (window.get("stable", SeriesCounters()) + stable).to_dict()}
    return verdict.outcome


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
        registry: Any,
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

    # -- record -------------------------------------------------------------------------------------------
    def _state(self, version: str) -> str:
        return str(self.registry.get_state(version).state.value)

    def _check_record(self, p: RolloutProgress) -> bool:
        """Raise :class:`RolloutStopped` if rolled back; True when someone already promoted it by hand."""
        record = self.registry.get_state(p.version)
        state = record.state.value
        if state == "rolled_back":
            reason = record.tags.get("mlcd.rollback_reason", "see the rollout record")
            raise RolloutStopped(f"version {p.version} was rolled back during the rollout: {reason}")
        if state == "champion":
            return True
        if state != "canary":
            raise RolloutStopped(f"version {p.version} is {state}, no longer a canary")
        self._paused = is_paused(record)  # read with the record: a pause holds the weight (mlcd pause)
        return False

    def _event(self, version: str, event: str, details: dict[str, Any]) -> None:
        self.registry.record_event(version, event, details, actor=self.actor, dag_run_id=self.dag_run_id)

    # -- steps --------------------------------------------------------------------------------------------
    def start(self, version: str, reason: str) -> RolloutProgress:
        """Set the canary alias and route it at 0 %; a first model (no champion) is promoted directly."""
        version = str(version)
        state = self._state(version)
        if state == "rolled_back":
            raise RolloutStopped(f"version {version} was already rolled back; it will not be canaried again")
        champion = self.registry.get_alias_version("champion")
        if state == "champion" or champion == version:
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
            from mlcd.guard.watch import rollback

            rollback(self.registry, self.router, version, why, {"refused": str(exc)}, self.actor, self.dag_run_id)
            raise RolloutAborted(why) from None
        self._event(version, "canary_started", {"stable": champion, "spec": self.spec.to_dict()})
        return RolloutProgress(version, champion)

    def begin_step(self, p: RolloutProgress) -> RolloutProgress:
        """Move to the next weight (or stay, for a stretched window) and take the window's first scrape."""
        if self._check_record(p):
            p.done, p.result = True, "promoted by someone else during the rollout"
            return p
        stay = (p.repeat and p.weight > 0) or self._paused
        target = p.weight if stay else next_weight(self.spec, p.weight)
        if target is None:
            raise ValueError(f"rollout of {p.version} is past its last step")
        self._move(p, target)
        if target != p.weight:
            p.window, p.held = {}, 0  # a new weight: its own counts (a stretched window keeps adding up)
        p.weight, p.repeat = target, False
        # The interval starts after the weight is set: each window is one stratum at one weight.
        p.last = snapshot_to_dict(self.scrape(self.metrics_url))
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
                                 f"canary {p.version} is no longer routed; traffic left where it is")
        try:
            self.router.set_routes(str(p.stable), p.version, target, expected_generation=routes.generation)
        except RouteConflict as exc:
            raise RolloutStopped(f"routes moved while canary {p.version} stepped to {target}%: {exc}; "
                                 "traffic left where it is") from None

    def poll(self, p: RolloutProgress) -> Outcome:
        """One scrape within the window (``run_rollout`` and the window trigger call this every poll)."""
        return observe(self.spec, p, self.scrape(self.metrics_url))

    def finish_step(self, p: RolloutProgress) -> StepResult:
        """Judge the window that began in :meth:`begin_step`, record it, and act on the verdict."""
        if self._check_record(p):
            p.done, p.result = True, "promoted by someone else during the rollout"
            verdict = StepVerdict(Outcome.PASS, ("promoted by hand during the rollout",))
            return StepResult(Action.ADVANCE, verdict, p)
        if self._paused:
            # Paused by a person: the window is neither judged nor counted; the next step holds the weight.
            self._event(p.version, "canary_step_held", {"weight": p.weight})
            p.repeat = True
            held = StepVerdict(Outcome.INCONCLUSIVE, (f"paused at {p.weight}%: weight held",))
            return StepResult(Action.REPEAT, held, p)
        self.poll(p)
        verdict = window_outcome(self.spec, p)
        p.outcomes.append(verdict.outcome.value)
        if verdict.outcome is Outcome.INCONCLUSIVE:
            p.held += 1
        action = next_action(self.spec, p.outcomes, p.held)
        elapsed = time.time() - p.window_started
        self._event(p.version, "canary_step", {
            "weight": p.weight, "window_s": round(elapsed, 1), "action": action.value, **verdict.to_dict(),
            "analysis": _evidence(p.verdict),
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
        from mlcd.guard.watch import rollback

        rollback(self.registry, self.router, p.version, reason,
                 {"outcomes": p.outcomes, "last": verdict.to_dict(), "verdict": p.verdict},
                 self.actor, self.dag_run_id)
        p.done, p.result = True, reason
        raise RolloutAborted(reason)

    def _undecided(self, p: RolloutProgress, verdict: StepVerdict) -> None:
        """Not enough evidence within the longest window: stop without failing the version."""
        retreat = self.spec.on_undecided == "retreat"
        if retreat:
            self.router.set_routes(str(p.stable), None, 0)  # users back on the version that is known to work
        reason = (f"canary undecided at {p.weight}% after {p.held} windows "
                  f"({self.spec.max_window_s:.0f}s): " + "; ".join(verdict.reasons)
                  + ("; traffic back on stable" if retreat else f"; weight held at {p.weight}%")
                  + f"; version {p.version} stays a canary, eligible for another rollout")
        self._event(p.version, "canary_undecided", {"weight": p.weight, "reason": reason,
                                                    "analysis": _evidence(p.verdict)})
        p.done, p.result = True, reason
        raise RolloutUndecided(reason)

    def _promote(self, p: RolloutProgress, verdict: StepVerdict) -> None:
        self.registry.promote(p.version, self.actor, f"canary passed {len(p.outcomes)} analysis windows",
                              self.dag_run_id, {"outcomes": p.outcomes, "last": verdict.to_dict()})
        self.router.set_routes(p.version, None, 0)
        p.done, p.result = True, f"promoted to champion after {len(p.outcomes)} windows"


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
            if rollout.poll(p) is Outcome.FAIL:
                break  # overwhelming evidence: finish the window now
        else:
            sleep(rollout.spec.analysis_window_s - waited)
        p = rollout.finish_step(p).progress
    return p


def rollout_from_settings(spec: RolloutSpec, actor: str = "mlcd", dag_run_id: str | None = None,
                          gateway_url: str | None = None, tracking_uri: str | None = None,
                          model_name: str | None = None, registry: Any | None = None) -> CanaryRollout:
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
