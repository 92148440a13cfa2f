"""One canary rollout, step by step, without Airflow: the operator and ``run_rollout`` both drive this.

Each step: read the rollout record (stop if the guard rolled the version back meanwhile), set the weight,
scrape the gateway's counters; after the analysis window: read the record again, scrape again, judge the
window with :func:`~mlcd.rollout.spec.step_verdict`, record the step in the rollout record, then advance,
repeat, abort (traffic back to stable, version rolled back with the evidence) or promote after the last step.
The progress between the two halves of a step is a JSON-able dict, so a deferred task can carry it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from mlcd.rollout.metrics import Snapshot, fetch_metrics, snapshot_from_dict, snapshot_to_dict, window_stats
from mlcd.rollout.router import Router
from mlcd.rollout.spec import (
    Action,
    Outcome,
    RolloutSpec,
    StepVerdict,
    VariantStats,
    next_action,
    next_weight,
    step_verdict,
)

log = logging.getLogger(__name__)


def is_paused(record: Any) -> bool:
    """True when the record's latest ``paused`` event is newer than its latest ``resumed`` (``mlcd pause``)."""
    paused, resumed = record.last_event("paused"), record.last_event("resumed")
    return paused is not None and (resumed is None or str(resumed.get("t", "")) < str(paused.get("t", "")))


class RolloutStopped(RuntimeError):
    """The version was rolled back (by the guard or a person) while the rollout ran."""


class RolloutAborted(RuntimeError):
    """The rollout's own analysis failed or stayed inconclusive too long: traffic is back on stable."""


@dataclass
class RolloutProgress:
    """Where a rollout is; JSON-able so it survives a deferral."""

    version: str
    stable: str | None
    weight: int = 0
    outcomes: list[str] = field(default_factory=list)
    baseline: dict[str, Any] = field(default_factory=dict)
    last_stable: dict[str, Any] | None = None
    window_started: float = 0.0
    repeat: bool = False
    done: bool = False
    result: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutProgress:
        return cls(**data)


@dataclass(frozen=True)
class StepResult:
    action: Action
    verdict: StepVerdict
    progress: RolloutProgress


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
        self.router.set_routes(champion, version, 0)
        self._event(version, "canary_started", {"stable": champion, "spec": self.spec.to_dict()})
        return RolloutProgress(version, champion)

    def begin_step(self, p: RolloutProgress) -> RolloutProgress:
        """Move to the next weight (or stay, for a repeated window) and take the baseline scrape."""
        if self._check_record(p):
            p.done, p.result = True, "promoted by someone else during the rollout"
            return p
        held = getattr(self, "_paused", False)
        target = p.weight if (p.repeat and p.weight > 0) or held else next_weight(self.spec, p.weight)
        if target is None:
            raise ValueError(f"rollout of {p.version} is past its last step")
        self.router.set_routes(str(p.stable), p.version, target)
        p.weight, p.repeat = target, False
        p.baseline = snapshot_to_dict(self.scrape(self.metrics_url))
        p.window_started = time.time()
        log.info("canary %s at %d%% (stable %s), window %.0fs", p.version, target, p.stable,
                 self.spec.analysis_window_s)
        return p

    def finish_step(self, p: RolloutProgress) -> StepResult:
        """Judge the window that began in :meth:`begin_step`, record it, and act on the verdict."""
        if self._check_record(p):
            p.done, p.result = True, "promoted by someone else during the rollout"
            verdict = StepVerdict(Outcome.PASS, ("promoted by hand during the rollout",))
            return StepResult(Action.ADVANCE, verdict, p)
        if getattr(self, "_paused", False):
            # Paused by a person: the window is neither judged nor counted; the next step holds the weight.
            self._event(p.version, "canary_step_held", {"weight": p.weight})
            p.repeat = True
            held = StepVerdict(Outcome.INCONCLUSIVE, (f"paused at {p.weight}%: weight held",))
            return StepResult(Action.REPEAT, held, p)
        after = self.scrape(self.metrics_url)
        before = snapshot_from_dict(p.baseline)
        canary = window_stats(before, after, "canary", p.version)
        stable = window_stats(before, after, "stable", p.stable)
        concurrent = True
        if stable.requests >= self.spec.min_stable_requests:
            p.last_stable = asdict(stable)
        elif p.last_stable is not None:
            # At 100 % the stable variant has no traffic: compare with its last window that had some.
            stable = VariantStats(**p.last_stable)
            concurrent = False
        verdict = step_verdict(self.spec, canary, stable, concurrent=concurrent)
        p.outcomes.append(verdict.outcome.value)
        action = next_action(self.spec, p.outcomes)
        elapsed = time.time() - p.window_started
        self._event(p.version, "canary_step", {
            "weight": p.weight, "window_s": round(elapsed, 1), "action": action.value, **verdict.to_dict(),
        })
        log.info("canary %s at %d%%: %s → %s (%s)", p.version, p.weight, verdict.outcome.value, action.value,
                 "; ".join(verdict.reasons))
        if action in (Action.ABORT_FAILED, Action.ABORT_INCONCLUSIVE):
            self._abort(p, action, verdict)
        if action is Action.REPEAT:
            p.repeat = True
        elif next_weight(self.spec, p.weight) is None:
            self._promote(p, verdict)
        return StepResult(action, verdict, p)

    def _abort(self, p: RolloutProgress, action: Action, verdict: StepVerdict) -> None:
        why = "failed its analysis" if action is Action.ABORT_FAILED else "stayed inconclusive too long"
        reason = f"canary {why} at {p.weight}%: " + "; ".join(verdict.reasons)
        # The one rollback the guard and people use too: traffic first (users before bookkeeping), then the record.
        from mlcd.guard.watch import rollback

        rollback(self.registry, self.router, p.version, reason, {"outcomes": p.outcomes, "last": verdict.to_dict()},
                 self.actor, self.dag_run_id)
        p.done, p.result = True, reason
        raise RolloutAborted(reason)

    def _promote(self, p: RolloutProgress, verdict: StepVerdict) -> None:
        self.registry.promote(p.version, self.actor, f"canary passed {len(p.outcomes)} analysis windows",
                              self.dag_run_id, {"outcomes": p.outcomes, "last": verdict.to_dict()})
        self.router.set_routes(p.version, None, 0)
        p.done, p.result = True, f"promoted to champion after {len(p.outcomes)} windows"


def run_rollout(rollout: CanaryRollout, version: str, reason: str, sleep: Callable[[float], None] = time.sleep
                ) -> RolloutProgress:
    """Walk the whole rollout in this process (CLI, demo, tests); the Airflow operator defers instead."""
    p = rollout.start(version, reason)
    while not p.done:
        p = rollout.begin_step(p)
        if p.done:
            break
        sleep(rollout.spec.analysis_window_s)
        p = rollout.finish_step(p).progress
    return p


def rollout_from_settings(spec: RolloutSpec, actor: str = "mlcd", dag_run_id: str | None = None,
                          gateway_url: str | None = None, tracking_uri: str | None = None,
                          model_name: str | None = None) -> CanaryRollout:
    """A rollout wired from ``MLCD_*`` settings (registry, router backend, gateway URL)."""
    from mlcd.registry import ModelRegistry
    from mlcd.rollout.router import router_from_settings
    from mlcd.settings import get_settings

    s = get_settings()
    url = gateway_url or s.gateway_url
    registry = ModelRegistry(tracking_uri or s.tracking_uri, model_name or s.model_name)
    return CanaryRollout(registry, router_from_settings(url), spec, url, actor, dag_run_id)
