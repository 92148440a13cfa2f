"""The rollout spec and the pure functions that walk it (Flagger's analysis, Argo Rollouts' three outcomes).

Nothing here does I/O: the canary task, the guard and the tests feed constructed statistics in and get a
decision out. A check is ``pass``, ``fail`` or ``inconclusive``; too little data is inconclusive, never a pass,
and each of fail / inconclusive has its own limit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

DEFAULT_STEPS: tuple[int, ...] = (5, 25, 50, 100)
# Errors needed before a window with fewer than ``min_requests`` canary requests can fail.
THIN_DATA_MIN_ERRORS = 5


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
    ABORT_INCONCLUSIVE = "abort_inconclusive"  # too many windows without enough evidence: halt, never promote


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
        inconclusive_limit: inconclusive windows tolerated; one more halts the rollout.
    """

    steps: tuple[int, ...] = DEFAULT_STEPS
    analysis_window_s: float = 60.0
    min_requests: int = 50
    min_stable_requests: int = 50
    max_error_rate_increase: float = 0.01
    max_p99_latency_ratio: float = 1.5
    p99_latency_slack_s: float = 0.005
    failure_limit: int = 0
    inconclusive_limit: int = 3

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

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["steps"] = list(self.steps)
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


def step_verdict(
    spec: RolloutSpec, canary_stats: VariantStats, stable_stats: VariantStats, *, concurrent: bool = True
) -> StepVerdict:
    """Judge one analysis window: fail on any breached threshold, else inconclusive on thin data, else pass.

    A failure is reported even on thin data (errors already seen are evidence), but a pass needs
    ``min_requests`` canary requests and ``min_stable_requests`` stable requests to compare with.

    Args:
        concurrent: the stable stats were measured in the same window. When they come from an earlier window
            (at 100 % the stable variant gets no traffic), latency is not compared: the machine's load changes
            between windows and would read as a slower model. Error rates still are.
    """
    fails: list[str] = []
    thin: list[str] = []
    c, s = canary_stats, stable_stats

    if c.requests <= 0:
        thin.append("canary received no traffic in the window")
    elif c.requests < spec.min_requests:
        thin.append(f"canary requests {c.requests} < minimum {spec.min_requests}")
    if s.requests < spec.min_stable_requests:
        thin.append(f"stable requests {s.requests} < minimum {spec.min_stable_requests}")

    # Error rate: with no stable baseline, compare against zero errors so a broken canary still fails.
    if c.requests > 0:
        c_rate = c.errors / c.requests
        s_rate = s.errors / s.requests if s.requests > 0 else 0.0
        increase = c_rate - s_rate
        # Thin data proves a failure only with several errors that would breach the limit even if the rest of
        # the window's minimum were clean, so a single early error does not abort a rollout.
        enough = c.requests >= spec.min_requests or (
            c.errors >= THIN_DATA_MIN_ERRORS
            and c.errors / spec.min_requests - s_rate > spec.max_error_rate_increase
        )
        if increase > spec.max_error_rate_increase and enough:
            fails.append(
                f"canary error rate {c_rate:.2%} exceeds stable {s_rate:.2%} by {increase:.2%} "
                f"(> {spec.max_error_rate_increase:.2%})"
            )

    # Latency: compared only side by side, and only when both sides have a p99 from enough requests.
    if not concurrent:
        pass
    elif c.p99_latency_s is not None and s.p99_latency_s is not None and c.requests >= spec.min_requests:
        if not (math.isfinite(c.p99_latency_s) and math.isfinite(s.p99_latency_s)):
            thin.append("p99 latency is not finite (observations above the top histogram bucket)")
        else:
            limit = spec.max_p99_latency_ratio * s.p99_latency_s + spec.p99_latency_slack_s
            if c.p99_latency_s > limit:
                fails.append(
                    f"canary p99 {c.p99_latency_s * 1000:.1f} ms > {spec.max_p99_latency_ratio:g}× stable p99 "
                    f"{s.p99_latency_s * 1000:.1f} ms + {spec.p99_latency_slack_s * 1000:.1f} ms"
                )
    elif c.requests >= spec.min_requests and s.requests >= spec.min_stable_requests:
        thin.append("p99 latency unavailable for canary or stable")

    if fails:
        return StepVerdict(Outcome.FAIL, tuple(fails + thin), c, s)
    if thin:
        return StepVerdict(Outcome.INCONCLUSIVE, tuple(thin), c, s)
    reasons = (
        f"canary {c.requests} requests, error rate {c.error_rate:.2%} vs stable {s.error_rate or 0.0:.2%}",
        f"canary p99 {c.p99_latency_s * 1000:.1f} ms vs stable {s.p99_latency_s * 1000:.1f} ms"  # type: ignore[operator]
        if concurrent and c.p99_latency_s is not None and s.p99_latency_s is not None
        else "latency not compared (stable measured in an earlier window)" if not concurrent
        else "latency not compared",
    )
    return StepVerdict(Outcome.PASS, reasons, c, s)


def next_action(spec: RolloutSpec, outcomes: Sequence[Outcome | str]) -> Action:
    """What to do after the latest window, given every window's outcome so far in this rollout.

    Failures and inconclusive windows count across the whole rollout (Argo Rollouts), each against its
    own limit; a pass advances.
    """
    if not outcomes:
        raise ValueError("next_action needs at least one outcome")
    values = [Outcome(o) for o in outcomes]
    if values.count(Outcome.FAIL) > spec.failure_limit:
        return Action.ABORT_FAILED
    if values.count(Outcome.INCONCLUSIVE) > spec.inconclusive_limit:
        return Action.ABORT_INCONCLUSIVE
    return Action.ADVANCE if values[-1] is Outcome.PASS else Action.REPEAT
