"""The rollout spec and the pure functions that walk it (Argo Rollouts' three outcomes).

Nothing here does I/O. Each window is judged by the analysis engine the guard uses too
(:class:`mlcd.rollout.analysis.Analysis`); a window is ``pass``, ``fail`` or ``inconclusive``; too little data is
inconclusive, never a pass, and inconclusive is never a failure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlcd.rollout.analysis import GuardThresholds

DEFAULT_STEPS: tuple[int, ...] = (5, 25, 50, 100)
UNDECIDED_ACTIONS = ("retreat", "hold")


class Outcome(str, Enum):
    """The verdict of one analysis window."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


class Action(str, Enum):
    """What the rollout does after a verdict."""

    ADVANCE = "advance"  # go to the next weight (or promote after the last)
    REPEAT = "repeat"  # stay at this weight for another window
    ABORT_FAILED = "abort_failed"  # too many failed windows: traffic back to stable
    ABORT_INCONCLUSIVE = "abort_inconclusive"  # undecided after the longest window: stop, not a failure


@dataclass(frozen=True)
class RolloutSpec:
    """How a canary moves from 0 to 100 % and what it must show at each step.

    Args:
        steps: canary weights in percent, strictly increasing, ending at 100.
        analysis_window_s: seconds of traffic judged at each step.
        min_requests: canary requests a window needs before it can pass (fewer is inconclusive).
        min_stable_requests: stable requests the comparison needs; at 100 % the caller passes the last
            window's stable statistics, since the stable variant gets no traffic then.
        max_error_rate_increase: canary error rate may exceed stable's by at most this (absolute, 0.01 = 1 pp).
        max_p99_latency_ratio: canary p99 may be at most this multiple of stable's p99 …
        p99_latency_slack_s: … plus this absolute slack, so millisecond jitter on a fast model is not a failure.
        failure_limit: failed windows tolerated; one more aborts (Argo's ``failureLimit``, default 0).
        inconclusive_limit: inconclusive windows repeated at one weight (the window stretches, its counts keep
            adding up) before the rollout is undecided; undecided is not a failure (see ``on_undecided``).
        poll_interval_s: how often a window scrapes the gateway and feeds the analysis engine (a failure ends
            the window at once).
        alpha: the false-rollback probability of the whole rollout (the engine's sequential test).
        on_undecided: ``"retreat"`` (traffic back to stable only; the version stays a canary, eligible for
            another try) or ``"hold"`` (keep its weight); either way the rollout stops and says so.
        thresholds: further overrides of :class:`mlcd.rollout.analysis.GuardThresholds`.
        metrics_blind_s: fail closed (canary to 0 %, rollout paused) when the metrics stay unreadable, or the
            canary's series vanish, for this many seconds; ``None``: ``MLCD_METRICS_BLIND_S`` or 30.
        holdback_pct: percent of traffic the previous champion keeps through the last ("100 %") step and the
            bake after promotion, so every verdict compares traffic served in the same interval (the last step
            routes ``100 - holdback_pct`` to the canary). 0 is a user's choice: the bake can then only compare
            with the past, which may alert and leave the bake unverified but never rolls back on its own.

    The window's pass needs ``min_requests`` canary and ``min_stable_requests`` concurrent stable requests at
    this weight; the engine judges errors, latency (side by side only), predicted classes and live accuracy;
    ``max_error_rate_increase``, ``max_p99_latency_ratio`` and ``p99_latency_slack_s`` are its practical floors.
    """

    steps: tuple[int, ...] = DEFAULT_STEPS
    analysis_window_s: float = 60.0
    min_requests: int = 50
    min_stable_requests: int = 50
    max_error_rate_increase: float = 0.005  # a null on the increase, rejected by its lower confidence bound
    max_p99_latency_ratio: float = 1.5
    p99_latency_slack_s: float = 0.005
    failure_limit: int = 0
    inconclusive_limit: int = 3
    poll_interval_s: float = 2.0
    alpha: float = 0.001
    on_undecided: str = "retreat"
    thresholds: Mapping[str, Any] = field(default_factory=dict)
    metrics_blind_s: float | None = None
    holdback_pct: int = 5

    def __post_init__(self) -> None:
        steps = tuple(int(s) for s in self.steps)
        object.__setattr__(self, "steps", steps)
        if not steps or steps[-1] != 100:
            raise ValueError(f"steps must end at 100, got {list(steps)}")
        if any(not 0 < s <= 100 for s in steps) or any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"steps must be strictly increasing percentages in 1..100, got {list(steps)}")
        if self.analysis_window_s <= 0:
            raise ValueError("analysis_window_s must be > 0")
        if self.min_requests < 1 or self.min_stable_requests < 1:
            raise ValueError("min_requests and min_stable_requests must be >= 1 (no data is never a pass)")
        if self.max_error_rate_increase < 0 or self.max_p99_latency_ratio < 1 or self.p99_latency_slack_s < 0:
            raise ValueError("thresholds must be non-negative and the latency ratio >= 1")
        if self.failure_limit < 0 or self.inconclusive_limit < 0:
            raise ValueError("limits must be >= 0")
        if self.poll_interval_s <= 0 or not 0 < self.alpha < 1:
            raise ValueError("poll_interval_s must be > 0 and alpha in (0, 1)")
        if self.on_undecided not in UNDECIDED_ACTIONS:
            raise ValueError(f"on_undecided must be one of {UNDECIDED_ACTIONS}, got {self.on_undecided!r}")
        object.__setattr__(self, "thresholds", dict(self.thresholds or {}))
        if self.metrics_blind_s is not None and not float(self.metrics_blind_s) > 0:
            raise ValueError(f"metrics_blind_s must be > 0 seconds, got {self.metrics_blind_s!r}")
        if isinstance(self.holdback_pct, bool) or not isinstance(self.holdback_pct, int) \
                or not 0 <= self.holdback_pct <= 50:
            raise ValueError(f"holdback_pct must be an integer percent in 0..50, got {self.holdback_pct!r}")
        if len(steps) > 1 and steps[-2] >= 100 - self.holdback_pct:
            raise ValueError(f"the step before 100 ({steps[-2]}) must be below 100 - holdback_pct "
                             f"({100 - self.holdback_pct}): the last step routes {100 - self.holdback_pct}%")

    def routed_weight(self, step: int) -> int:
        """The canary's routed weight at ``step``: the last step leaves ``holdback_pct`` on stable (the control)."""
        return min(int(step), 100 - self.holdback_pct)

    @property
    def blind_s(self) -> float:
        """The fail-closed window: the spec's ``metrics_blind_s``, else ``MLCD_METRICS_BLIND_S``, else 30 s."""
        from mlcd.rollout.failsafe import default_blind_s

        return float(self.metrics_blind_s) if self.metrics_blind_s is not None else default_blind_s()

    @property
    def max_window_s(self) -> float:
        """The longest one weight is held while its window stretches for data."""
        return self.analysis_window_s * (self.inconclusive_limit + 1)

    def guard_thresholds(self) -> GuardThresholds:
        """The analysis engine's thresholds for this spec (the engine is shared with the guard)."""
        from mlcd.rollout.analysis import GuardThresholds

        base = {
            "alpha": self.alpha,
            "min_requests": self.min_requests,
            "min_predictions": self.min_requests,
            "min_latency_samples": min(self.min_requests, self.min_stable_requests),
            "min_error_rate_increase": self.max_error_rate_increase,
            "min_latency_ratio": self.max_p99_latency_ratio,
            "min_latency_increase_s": self.p99_latency_slack_s,
        }
        return GuardThresholds.from_dict({**base, **self.thresholds})

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["steps"] = list(self.steps)
        data["thresholds"] = dict(self.thresholds)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> RolloutSpec:
        """Build from a mapping (a DAG param, a JSON file); unknown keys are refused, not ignored."""
        if not data:
            return cls()
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown rollout spec keys: {', '.join(unknown)}")
        kwargs = dict(data)
        if "steps" in kwargs:
            kwargs["steps"] = tuple(kwargs["steps"])
        return cls(**kwargs)


@dataclass(frozen=True)
class VariantStats:
    """One variant's traffic during one analysis window (deltas of the gateway's counters)."""

    requests: int = 0
    errors: int = 0
    p99_latency_s: float | None = None
    latency_samples: int = 0

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "error_rate": self.error_rate}


@dataclass(frozen=True)
class StepVerdict:
    """The outcome of one window with every reason a person needs to read it."""

    outcome: Outcome
    reasons: tuple[str, ...]
    canary: VariantStats = field(default_factory=VariantStats)
    stable: VariantStats = field(default_factory=VariantStats)

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "reasons": list(self.reasons),
            "canary": self.canary.to_dict(),
            "stable": self.stable.to_dict(),
        }


def next_weight(spec: RolloutSpec, current_weight: int) -> int | None:
    """The first step above ``current_weight``; ``None`` once 100 % (or more) has been reached.

    Args:
        spec: the rollout spec.
        current_weight: the canary's weight now, in percent (0 before the first step).

    Returns:
        The next canary weight, or ``None`` when the rollout is at its last step.
    """
    for step in spec.steps:
        if step > current_weight:
            return step
    return None


def next_action(spec: RolloutSpec, outcomes: Sequence[Outcome | str], inconclusive_at_weight: int | None = None
                ) -> Action:
    """What to do after the latest window, given the outcomes so far (at this weight, for inconclusive).

    Failures count across the whole rollout (Argo Rollouts); inconclusive windows count at the current weight:
    the window stretches up to ``inconclusive_limit`` repeats, then the rollout is undecided; a pass advances.
    """
    if not outcomes:
        raise ValueError("next_action needs at least one outcome")
    values = [Outcome(o) for o in outcomes]
    if values.count(Outcome.FAIL) > spec.failure_limit:
        return Action.ABORT_FAILED
    held = values.count(Outcome.INCONCLUSIVE) if inconclusive_at_weight is None else inconclusive_at_weight
    if held > spec.inconclusive_limit:
        return Action.ABORT_INCONCLUSIVE
    return Action.ADVANCE if values[-1] is Outcome.PASS else Action.REPEAT
