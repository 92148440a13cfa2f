"""Fail closed: a canary whose metrics cannot be read is taken to 0 % and its rollout paused, with why.

No data is not a pass (Argo Rollouts, Flagger): when the metrics source stays unreadable for ``blind_s`` seconds
(``MLCD_METRICS_BLIND_S``, default 30, or the canary spec's ``metrics_blind_s``), or the canary's own series
vanish (a gateway restarted without its models was read as "version retired", hence healthy), nobody can tell
whether the canary hurts users. Both the guard (``Guard.poll`` in the guard layer) and the canary task
(:class:`mlcd.rollout.canary.CanaryRollout`) then call :func:`fail_closed`:

1. traffic first, through the router alone (no registry: MLflow may be what is down): the canary's weight goes
   to 0 with a compare-and-set on the routes' generation, so a rollback that landed meanwhile is left alone;
2. then the rollout record: a ``paused`` event with the reason (the canary task holds its weight while
   paused, so it does not step back up), written with bounded MLflow retries and tolerated when MLflow is down
   (traffic is already safe; the result says the record is missing so the caller can log or retry it).

Blindness is measured from the first failed read, so one slow scrape does not pause a rollout.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlcd.registry.protocol import Registry

log = logging.getLogger(__name__)

BLIND_ENV = "MLCD_METRICS_BLIND_S"
DEFAULT_BLIND_S = 30.0


class FailClosedReason(str, Enum):
    """Why a rollout failed closed (the head of the recorded reason)."""

    METRICS_UNREADABLE = "metrics_unreadable"  # the metrics source did not answer, or answered garbage
    CANARY_SERIES_MISSING = "canary_series_missing"  # it answered, but the canary's series are gone


def _unavailable_types() -> tuple[type[BaseException], ...]:
    """What a failed metrics read raises: URL/connection errors (``OSError``; ``requests``' errors are ``OSError``
    too), a malformed exposition (``ValueError``), and the metrics providers' ``MetricsUnavailable`` when that
    module exists."""
    types: list[type[BaseException]] = [OSError, ValueError]
    try:
        from mlcd.rollout.providers import MetricsUnavailable  # type: ignore[import-not-found,unused-ignore]

        types.append(MetricsUnavailable)
    except ImportError:
        pass
    return tuple(types)


METRICS_ERRORS: tuple[type[BaseException], ...] = _unavailable_types()


def default_blind_s() -> float:
    """``MLCD_METRICS_BLIND_S`` (seconds), else 30; a bad value is a one-line error."""
    raw = os.environ.get(BLIND_ENV, "").strip()
    if not raw:
        return DEFAULT_BLIND_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{BLIND_ENV} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{BLIND_ENV} must be > 0, got {raw!r}")
    return value


def blind_for(blind_since: float | None, now: float) -> float:
    """Seconds the metrics have been unreadable (0 when they are readable)."""
    return 0.0 if blind_since is None else max(0.0, now - blind_since)


@dataclass(frozen=True)
class FailClosedResult:
    """What :func:`fail_closed` did.

    Attributes:
        version: the canary.
        reason: the recorded reason.
        weight_before: its weight when the routes were read (``None``: the router could not be read).
        traffic_safe: the canary gets no traffic now (moved to 0, already at 0, or no longer routed).
        paused: the pause is in the rollout record.
        error: why a step could not be done (empty when both were).
    """

    version: str
    reason: str
    weight_before: int | None
    traffic_safe: bool
    paused: bool
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def zero_canary(router: Any, version: str) -> tuple[int | None, bool, str]:
    """Take ``version``'s weight to 0 if it is the routed canary (compare-and-set); returns (weight before, safe,
    error). A lost race is re-read once: whoever won (usually a rollback) decides, and their routes are kept."""
    from mlcd.rollout.router import RouteConflict, RouterError

    before: int | None = None
    for _ in range(2):
        try:
            routes = router.get_routes()
            if before is None:
                before = int(routes.canary_weight) if routes.canary == version else 0
            if routes.canary != version or int(routes.canary_weight) == 0 or not routes.stable:
                return before, True, ""
            router.set_routes(str(routes.stable), version, 0, expected_generation=routes.generation)
            log.warning("fail closed: canary %s taken from %d%% to 0%% (stable %s)", version,
                        routes.canary_weight, routes.stable)
            return before, True, ""
        except RouteConflict:
            continue
        except (RouterError, OSError) as exc:
            return before, False, f"traffic not moved: {exc}"
    return before, False, "traffic not moved: the routes kept moving"


def fail_closed(router: Any, registry: Registry | None, version: str, reason: str, actor: str,
                dag_run_id: str | None = None) -> FailClosedResult:
    """Canary to 0 % through the router, then a ``paused`` event with ``reason`` (see the module docstring).

    Args:
        router: the traffic router (local gateway or HTTPRoute): the only thing the first step needs.
        registry: a :class:`mlcd.registry.ModelRegistry`, or ``None`` when none can be built (MLflow down).
        version: the canary.
        reason: one line, starting with a :class:`FailClosedReason` value.
        actor, dag_run_id: recorded with the pause.

    Returns:
        What was done; never raises for an unreachable router or registry (the result says so).
    """
    version = str(version)
    before, safe, error = zero_canary(router, version)
    paused = False
    if registry is not None:
        from mlcd.registry.retries import bounded_mlflow_retries
        from mlcd.registry.state import RolloutState
        from mlcd.registry.tags import Event
        from mlcd.rollout.canary import is_paused

        try:
            with bounded_mlflow_retries():
                record = registry.get_state(version)
                if record.state is not RolloutState.CANARY:
                    paused, why = False, f"version {version} is {record.state.value}: no rollout to pause"
                elif is_paused(record):
                    paused, why = True, ""
                else:
                    registry.record_event(version, Event.PAUSED.value, {"reason": reason, "fail_closed": True,
                                                              "weight_before": before}, actor, dag_run_id)
                    paused, why = True, ""
        except Exception as exc:  # noqa: BLE001 - MLflow down must not undo a traffic move already made
            why = f"pause not recorded (registry unavailable): {type(exc).__name__}: {exc}"
        if why:
            error = f"{error}; {why}" if error else why
    else:
        error = f"{error}; pause not recorded: no registry" if error else "pause not recorded: no registry"
    if error:
        log.warning("fail closed for version %s: %s", version, error)
    from mlcd.rollout import opsignals

    # mlcd_fail_closed_total on the gateways' /metrics, and the alert Connection through the Airflow listener.
    opsignals.record(opsignals.OpsEvent.FAIL_CLOSED, version, reason)
    return FailClosedResult(version, reason, before, safe, paused, error)
