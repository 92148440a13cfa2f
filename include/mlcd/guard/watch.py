"""The guard's moving parts without Airflow: one poll of the gateway, and what a rollback does.

A guard run watches one version from the moment it is served as a canary until it is either rolled back, or
promoted and healthy through a bake period. Each :meth:`Guard.poll` scrapes the gateway's ``/metrics`` once and
feeds the *interval since the previous poll* (canary and stable, same interval, with the canary weight the
gateway reports) to the analysis engine (:class:`mlcd.rollout.analysis.Analysis`), the same engine every canary step
and ``mlcd watch`` use. The engine's sequential test keeps the false-rollback rate of the whole run below
``alpha`` however many polls it takes. The decision is one of :class:`Decision`:

* ``watch``: keep polling (no version yet, too little data, or pass/inconclusive so far);
* ``healthy``: done (bake period over with enough data and no failure, no canary within the grace period, or
  the version left serving without the guard: the rollout aborted it or a person moved it);
* ``unverified``: the bake period ended without enough traffic to say anything: not healthy, not broken;
* ``breach``: the engine failed the version; the verdict (every statistic, count and p-value) is the evidence;
* ``blind``: fail closed (:mod:`mlcd.rollout.failsafe`): the canary's metrics were unreadable for ``blind_s``
  seconds, or its series vanished from a gateway that now serves nothing (restarted without its models): the
  caller takes the canary to 0 % and pauses the rollout. No data is never read as healthy.

Which version and phase is read from the gateway itself (``mlcd_gateway_model_info{variant, version}``), so a
poll needs no registry call. After promotion the watched version serves as ``stable`` and the previous champion
keeps a small share as ``holdback`` (the rollout spec's ``holdback_pct``): the bake judges the new champion
against the holdback served in the same intervals, with the same engine and tests as the canary steps, plus its
error rate against all the control version's counts. With no holdback (a user's choice of 0) the version can
only be compared with what the old champion served earlier: such a check alerts and the bake ends
``unverified``, never ``breach``. A breach in the bake sends the traffic back to the holdback version (it is
the previous champion).

The state between polls is a JSON-able dict (:class:`GuardState`, the engine's state included), so a trigger
serialises it and a restart continues the same test instead of starting a fresh one.

What a breach leads to (:func:`mlcd.rollout.actions.rollback`: traffic first, then the registry) lives in the
rollout layer: the guard decides, the rollout acts.

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

from mlcd.rollout.analysis import (
    CLASSES_VS_REFERENCE,
    ERROR_VS_REFERENCE,
    LATENCY,
    Analysis,
    GuardThresholds,
    GuardVerdict,
)
from mlcd.rollout.failsafe import METRICS_ERRORS, FailClosedReason, blind_for, default_blind_s
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
from mlcd.rollout.spec import Outcome

log = logging.getLogger(__name__)

STABLE, CANARY, HOLDBACK = "stable", "canary", "holdback"


class Decision(str, Enum):
    """What the guard does after a poll."""

    WATCH = "watch"
    HEALTHY = "healthy"
    UNVERIFIED = "unverified"
    BREACH = "breach"
    BLIND = "blind"  # fail closed: metrics unreadable (or the canary's series gone) for blind_s


class MetricsBlindError(OSError):
    """The metrics stayed unreadable past ``blind_s`` before any canary was seen (an ``OSError``: callers count it
    as a failed scrape)."""


class StopReason(str, Enum):
    """Why a guard run ended (every decision but ``watch`` has one): callers switch on it, people read the message."""

    CANARY_FAILED = "canary_failed"  # breach of a canary
    CHAMPION_FAILED = "champion_failed"  # breach in the bake period after promotion
    BAKE_COMPLETE = "bake_complete"
    BAKE_UNVERIFIED = "bake_unverified"  # the bake period ended without the version shown healthy
    NO_CANARY = "no_canary"  # nothing was served to watch within the grace period
    VERSION_RETIRED = "version_retired"  # the version left serving without the guard (aborted, moved by hand)
    METRICS_BLIND = "metrics_blind"  # the metrics stayed unreadable too long: failed closed (mlcd.rollout.failsafe)


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
        blind_s: metrics unreadable this long while a canary is watched → ``blind`` (fail closed);
            default ``MLCD_METRICS_BLIND_S`` or 30.
    """

    gateway_url: str
    version: str | None = None
    poll_interval_s: float = 2.0
    bake_s: float = 300.0
    grace_s: float = 300.0
    thresholds: GuardThresholds = field(default_factory=GuardThresholds)
    blind_s: float = field(default_factory=default_blind_s)

    def __post_init__(self) -> None:
        if self.poll_interval_s <= 0 or self.bake_s < 0 or self.grace_s < 0:
            raise ValueError("poll_interval_s must be > 0, bake_s and grace_s >= 0")
        if self.blind_s <= 0:
            raise ValueError("blind_s must be > 0")
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
        blind_since: when the metrics became unreadable (or the canary's series vanished); ``None`` while readable.
        holdback: the version held back as the bake's control (the previous champion), once seen.
        holdback_weight: the holdback's share (0–1) the gateway reported at the previous poll.
        bake_control_requests: requests the holdback served in the bake period (the control's sample).
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
    blind_since: float | None = None
    holdback: str | None = None
    holdback_weight: float | None = None
    bake_control_requests: float = 0.0

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
        stop: why the run ended (``None`` while watching); a breach and an unverified bake fill it in themselves.
    """

    decision: Decision
    reason: str
    state: GuardState
    verdict: GuardVerdict | None = None
    stop: StopReason | None = None

    def __post_init__(self) -> None:
        if self.stop is None and self.decision is Decision.BREACH:
            failed = StopReason.CHAMPION_FAILED if self.state.phase == Phase.BAKE.value else StopReason.CANARY_FAILED
            object.__setattr__(self, "stop", failed)
        elif self.stop is None and self.decision is Decision.UNVERIFIED:
            object.__setattr__(self, "stop", StopReason.BAKE_UNVERIFIED)
        elif self.stop is None and self.decision is Decision.BLIND:
            object.__setattr__(self, "stop", StopReason.METRICS_BLIND)
        if self.decision is Decision.HEALTHY and self.stop is None:
            raise ValueError(f"a healthy end needs its StopReason: {self.reason}")

    def as_dict(self) -> dict[str, Any]:
        """The JSON-able payload a trigger event and an XCom carry (the rollback's evidence)."""
        return {
            "decision": self.decision.value,
            "reason": self.reason,
            "stop": self.stop.value if self.stop is not None else None,
            "version": self.state.version,
            "stable": self.state.stable,
            "phase": self.state.phase,
            "look": self.state.look,
            "elapsed_s": round(time.time() - self.state.started_at, 1),
            "verdict": self.verdict.as_dict() if self.verdict is not None else None,
            # The bake's control, for the operator's page and `mlcd watch`: which version, its share, its counts.
            "control": {"holdback": self.state.holdback, "holdback_weight": self.state.holdback_weight,
                        "bake_requests": self.state.bake_control_requests,
                        "alerts": list(self.verdict.alerts) if self.verdict is not None else []}
            if self.state.phase == Phase.BAKE.value else None,
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
        try:
            scrape = self.scrape(self.config.gateway_url)
        except METRICS_ERRORS as exc:
            # Fail closed: an unreadable source is never a pass; it ends in `blind` once it lasts blind_s.
            state.failures += 1
            return self._blind(state, FailClosedReason.METRICS_UNREADABLE,
                               f"metrics of {self.config.gateway_url} unreadable: {type(exc).__name__}: {exc}")
        now = self.clock()
        served = scrape.served
        if not served and state.phase != Phase.WAITING.value:
            # A gateway that answers but serves no model (restarted without its models, unready): the watched
            # version's series are gone. Before, this read as "version retired" and ended healthy.
            state.failures += 1
            return self._blind(state, FailClosedReason.CANARY_SERIES_MISSING,
                               f"the gateway serves no model: version {state.version}'s series are gone")
        state.failures, state.blind_since = 0, None
        canary_v, stable_v = served.get(CANARY), served.get(STABLE)
        last = snapshot_from_dict(state.last)
        last_weight, last_holdback = state.last_weight, state.holdback_weight
        state.last, state.last_weight = snapshot_to_dict(scrape.counters), scrape.canary_weight
        state.holdback_weight = scrape.holdback_weight

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
                                  f"{self.config.grace_s:.0f}s: nothing to watch", state, stop=StopReason.NO_CANARY)
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
                              "aborted it or a person moved it): nothing left to guard", state,
                              stop=StopReason.VERSION_RETIRED)

        # Bake: the version serves as stable; the previous champion's holdback (when there is one) is the
        # concurrent control, judged like stable in the canary steps (latency included: same intervals).
        if stable_v != v:
            return PollResult(Decision.HEALTHY, f"version_retired: version {v} is no longer the served champion "
                              f"(stable is {stable_v})", state, stop=StopReason.VERSION_RETIRED)
        alone = diff(last.get((STABLE, v)), scrape.counters.get((STABLE, v)))
        held_v = served.get(HOLDBACK)
        control = SeriesCounters()
        if held_v is not None:
            control = diff(last.get((HOLDBACK, held_v)), scrape.counters.get((HOLDBACK, held_v)))
            state.holdback = held_v
        state.bake_requests += alone.requests
        # The interval's stratum is the reported split only when it did not change within it.
        weight = 1.0 - scrape.holdback_weight if held_v is not None and last_holdback is not None \
            and last_holdback == scrape.holdback_weight else None
        state.bake_control_requests += control.requests
        skip = () if held_v is not None else (LATENCY,)
        result = self._judge(state, alone, control, weight, "champion", skip=skip, bake=True)
        if result.decision is Decision.WATCH and now - (state.promoted_at or now) >= self.config.bake_s:
            t = self.config.thresholds
            if state.bake_requests < t.min_requests:
                return PollResult(Decision.UNVERIFIED, f"bake_unverified: version {v} served "
                                  f"{int(state.bake_requests)} requests in its {self.config.bake_s:.0f}s bake period "
                                  f"(< {t.min_requests} needed): not verified healthy", result.state, result.verdict)
            # Healthy means the bake's own checks passed on enough data: against the holdback served alongside
            # (every concurrent check, and the errors against the control's counts), or, with no holdback, the
            # comparisons with the past, which must pass without an alert. Requests alone prove nothing.
            outcomes = {ch.name: ch for ch in (result.verdict.checks if result.verdict else ())}
            if state.bake_control_requests > 0:
                bake_checks: tuple[str, ...] = (ERROR_VS_REFERENCE,)
                unproven = [f"{ch.name}: {ch.reason}" for ch in outcomes.values()
                            if ch.alert or (ch.name in t.required and ch.outcome is not Outcome.PASS)]
                if result.verdict is not None and result.verdict.outcome is not Outcome.PASS:
                    unproven += [r for r in result.verdict.reasons if r not in unproven]
            else:
                # No holdback (a user's choice): the checks against the past must pass; an alert leaves it unverified.
                bake_checks, unproven = (ERROR_VS_REFERENCE, CLASSES_VS_REFERENCE), []
            unproven += [f"{name}: {outcomes[name].reason}" if name in outcomes else f"{name}: no reference to "
                         "compare with (the guard never saw the old champion serve)"
                         for name in bake_checks
                         if name not in outcomes or outcomes[name].outcome is not Outcome.PASS]
            if unproven:
                return PollResult(Decision.UNVERIFIED, f"bake_unverified: version {v} served "
                                  f"{int(state.bake_requests)} requests in its {self.config.bake_s:.0f}s bake period "
                                  "but was not shown healthy: " + "; ".join(unproven), result.state, result.verdict)
            return PollResult(Decision.HEALTHY, f"bake_complete: version {v} healthy for "
                              f"{self.config.bake_s:.0f}s after promotion ({int(state.bake_requests)} requests)",
                              result.state, result.verdict, StopReason.BAKE_COMPLETE)
        return result

    def _blind(self, state: GuardState, why: FailClosedReason, detail: str) -> PollResult:
        """One poll without usable metrics: keep watching until it has lasted ``blind_s``, then fail closed."""
        now = self.clock()
        if state.blind_since is None:
            state.blind_since = now
        blind = blind_for(state.blind_since, now)
        version = state.version or self.config.version
        if blind < self.config.blind_s:
            return PollResult(Decision.WATCH, f"{why.value}: {detail} ({blind:.0f}s of {self.config.blind_s:.0f}s "
                              "before failing closed)", state)
        if state.phase == Phase.BAKE.value:
            # A champion has no canary weight to take away: past its bake it is unverified, never healthy.
            if now - (state.promoted_at or now) >= self.config.bake_s:
                return PollResult(Decision.UNVERIFIED, f"bake_unverified: {why.value}: {detail} for {blind:.0f}s "
                                  f"at the end of version {version}'s bake period", state)
            return PollResult(Decision.WATCH, f"{why.value}: {detail} ({blind:.0f}s; baking)", state)
        if version is None:
            # Nothing known to take to 0 %: an error the caller counts (the trigger ends `scrape_failed`, the task
            # fails and retries) rather than a quiet wait or, worse, "no canary: healthy" after the grace period.
            raise MetricsBlindError(f"{why.value}: {detail} for {blind:.0f}s and no canary known yet: nothing to "
                                    "fail closed on")
        if state.version is None:
            state.version = version
        return PollResult(Decision.BLIND, f"{why.value}: {detail} for {blind:.0f}s (>= {self.config.blind_s:.0f}s): "
                          f"failing closed, canary {version} to 0% and its rollout paused", state)

    def _judge(self, state: GuardState, canary: SeriesCounters, stable: SeriesCounters, weight: float | None,
               role: str, skip: tuple[str, ...] = (), bake: bool = False) -> PollResult:
        engine = Analysis(self.config.thresholds, state.analysis or None)
        verdict = engine.update(canary, stable, weight, skip=skip, bake=bake)
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

    A scrape that fails counts towards the fail-closed window (``blind_s``, inside :meth:`Guard.poll`);
    any other ``OSError`` is retried up to ``max_failures`` times in a row, then propagates. ``timeout_s`` bounds
    the whole watch (``TimeoutError``).
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
