"""The holdback: the previous champion kept on a small share after a promotion, and its release when the bake ends.

Through the last ("100 %") step and the whole bake a verdict needs a control served in the same intervals (users'
inputs change by the hour; a comparison with the past reads that as a worse model). The canary task promotes with
``holdback=<old champion>, holdback_weight=<spec.holdback_pct>`` (:meth:`mlcd.rollout.canary.CanaryRollout`),
the guard judges the new champion against it (:mod:`mlcd.guard.watch`), a breach sends all traffic back to it
(:func:`mlcd.rollout.actions.rollback`), and when the bake is over, healthy or unverified, :func:`release`
sets its weight to 0 so the old version is no longer served, and records that in the new champion's record.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from mlcd.registry.protocol import Registry
from mlcd.registry.tags import Event
from mlcd.rollout.router import RouteConflict, Router

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Release:
    """What :func:`release` did.

    Attributes:
        version: the champion whose bake ended.
        holdback: the version that was held back (``None``: nothing was).
        weight: the holdback's weight before (percent).
        released: the holdback was taken to 0 by this call.
        detail: one line for the task log and the record.
    """

    version: str
    holdback: str | None
    weight: int
    released: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def release(router: Router, registry: Registry | None, version: str, reason: str, actor: str = "mlcd",
            dag_run_id: str | None = None) -> Release:
    """End the holdback of ``version``'s bake: its weight to 0 (compare-and-set), then the record. Idempotent.

    Only a holdback next to ``version`` serving as stable is released: if the routes moved (a rollback sent the
    traffic to the holdback, a new canary started) they are left as they are. A conflicting writer in between
    wins too (:class:`RouteConflict`): the answer says so and nothing is recorded.
    """
    version = str(version)
    routes = router.get_routes()
    held = getattr(routes, "holdback", None)
    weight = int(getattr(routes, "holdback_weight", 0) or 0)
    if routes.stable != version or not held:
        return Release(version, held, weight, False, f"no holdback next to version {version} (stable "
                       f"{routes.stable}, holdback {held}): nothing to release")
    try:
        router.set_routes(version, routes.canary, routes.canary_weight if routes.canary else 0,
                          expected_generation=routes.generation)
    except RouteConflict as exc:
        return Release(version, held, weight, False, f"routes moved before the holdback was released: {exc}")
    detail = f"holdback version {held} ({weight}%) released: {reason}"
    log.info("version %s: %s", version, detail)
    if registry is not None:
        registry.record_event(version, Event.HOLDBACK_RELEASED.value,
                              {"holdback": held, "holdback_weight": weight, "reason": reason},
                              actor=actor, dag_run_id=dag_run_id)
    return Release(version, held, weight, True, detail)
