"""The registry's invariants, checked (``mlcd status``) and repaired (``mlcd reconcile``).

Invariants, from the aliases and the versions' rollout records:

* exactly one champion: the ``champion`` alias exists once any version was champion, and only its holder's
  record says ``champion``;
* ``champion`` is never on a ``rolled_back`` (nor ``rejected``/``archived``) version;
* ``previous`` is the version that was champion just before the current one (if it is still ``previous``), and
  no other version's record says ``previous``;
* a canary alias is never on a ``rejected``/``rolled_back``/``archived`` version, nor on the champion;
* no move is left half-done in the lease table (a writer died holding it).

:func:`check` is pure; :func:`reconcile` repairs one violation at a time under the registry lease and re-reads,
until none is left, so it is idempotent and converges from any mix of half-done moves. Each repair is printed by
the CLI with its reason and recorded on the version (a ``reconciled`` history event and ``mlcd.reconciled*``
tags). A repair follows the recorded intent where there is one (``rollback_started`` → its restore target,
``promote_started`` → the old champion), since that is what the interrupted writer meant to do.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from mlcd.registry.base import now_iso
from mlcd.registry.lease import read_lease
from mlcd.registry.protocol import Registry
from mlcd.registry.state import RolloutRecord, RolloutState
from mlcd.registry.tags import (
    RETIRED_STATES,
    TAG_RECONCILED,
    TAG_RECONCILED_AT,
    TAG_ROLLBACK_REASON,
    Alias,
    Event,
    Violation,
)

if TYPE_CHECKING:
    from mlcd.registry.client import ModelRegistry  # reads the MLflow tags directly: the implementation

log = logging.getLogger(__name__)
S = RolloutState
RECONCILE_ACTOR = "mlcd reconcile"
MAX_REPAIRS = 20  # each repair fixes one finding; a registry needing more is refused rather than looped on


@dataclass(frozen=True)
class Finding:
    """One broken invariant: what, on which version, and in words."""

    violation: Violation
    version: str | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "violation": self.violation.value}


@dataclass(frozen=True)
class Repair:
    """One repair made: which finding, what was done, and why that is the right fix."""

    violation: Violation
    version: str | None
    action: str
    why: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "violation": self.violation.value}

    def line(self) -> str:
        return f"{self.violation.value}: {self.action} (why: {self.why})"


def _champion_entries(records: dict[str, RolloutRecord]) -> list[tuple[str, str]]:
    """``(time, version)`` of every accepted transition into ``champion``, oldest first."""
    out = [
        (str(e.get("t", "")), v)
        for v, rec in records.items()
        for e in rec.transitions()
        if e.get("to") == S.CHAMPION.value
    ]
    return sorted(out, key=lambda tv: (tv[0], int(tv[1])))


def expected_previous(champion: str | None, records: dict[str, RolloutRecord]) -> str | None:
    """The version champion right before ``champion``'s current term, if its record still says ``previous``."""
    if champion is None:
        return None
    entries = _champion_entries(records)
    idx = max((i for i, (_, v) in enumerate(entries) if v == champion), default=None)
    if idx is None:
        return None
    for _, v in reversed(entries[:idx]):
        if v != champion:
            rec = records.get(v)
            return v if rec is not None and rec.state is S.PREVIOUS else None
    return None


def restore_target(holder: str, aliases: dict[str, str], records: dict[str, RolloutRecord]) -> str | None:
    """Who should hold ``champion`` instead of a retired ``holder``: the recorded intent first, then history."""
    rec = records.get(holder)
    candidates: list[str] = []
    if rec is not None:
        for event, key in ((Event.ROLLBACK_STARTED, "restore"), (Event.PROMOTE_STARTED, "old_champion")):
            entry = rec.last_event(event.value)
            target = (entry or {}).get("d", {}).get(key)
            if target is not None:
                candidates.append(str(target))
    if aliases.get(Alias.PREVIOUS.value):
        candidates.append(aliases[Alias.PREVIOUS.value])
    candidates += [v for _, v in reversed(_champion_entries(records))]
    for v in candidates:
        r = records.get(v)
        if v != holder and r is not None and r.state not in RETIRED_STATES and r.state is not S.CANARY:
            return v
    return None


def check(
    aliases: dict[str, str], records: dict[str, RolloutRecord], lease_row: dict[str, Any] | None = None
) -> list[Finding]:
    """Every broken invariant, most urgent (what serving follows) first. Pure: reads nothing itself."""
    out: list[Finding] = []
    champion = aliases.get(Alias.CHAMPION.value)
    canary = aliases.get(Alias.CANARY.value)
    previous = aliases.get(Alias.PREVIOUS.value)
    recorded = sorted((v for v, r in records.items() if r.state is S.CHAMPION), key=int)

    if lease_row and lease_row.get("intent") and not lease_row.get("held"):
        intent = lease_row["intent"]
        out.append(Finding(Violation.STALE_INTENT, None,
                           f"an unfinished {intent.get('op')} {intent.get('args')} was left in the registry lease "
                           f"by {lease_row.get('owner') or 'a writer that died'}"))
    if champion is not None and champion in records:
        state = records[champion].state
        if state in RETIRED_STATES:
            out.append(Finding(Violation.CHAMPION_RETIRED, champion,
                               f"alias champion -> version {champion}, which is {state.value}"))
        elif state is not S.CHAMPION:
            out.append(Finding(Violation.CHAMPION_RECORD, champion,
                               f"alias champion -> version {champion}, but its record says {state.value} "
                               "(an interrupted promotion)"))
    elif champion is None and recorded:
        out.append(Finding(Violation.NO_CHAMPION, recorded[-1],
                           f"no champion alias, but version(s) {recorded} are recorded champion"))
    others = [v for v in recorded if v != champion]
    if champion is not None and others:
        out.append(Finding(Violation.MANY_CHAMPIONS, others[0],
                           f"versions {recorded} are recorded champion; only {champion} holds the alias"))
    if canary is not None and canary in records:
        state = records[canary].state
        if state in RETIRED_STATES:
            out.append(Finding(Violation.CANARY_RETIRED, canary,
                               f"alias canary -> version {canary}, which is {state.value}"))
        elif canary == champion and state is S.CHAMPION:
            out.append(Finding(Violation.ALIAS_STATE, canary,
                               f"version {canary} holds both champion and canary (a promotion left canary behind)"))
    if champion is not None and champion in records and records[champion].state is S.CHAMPION:
        want = expected_previous(champion, records)
        if previous != want:
            out.append(Finding(Violation.PREVIOUS_HISTORY, previous or want,
                               f"alias previous -> {previous}, but by the history it should be {want}"))
        stray = sorted((v for v, r in records.items() if r.state is S.PREVIOUS and v != want), key=int)
        if stray:
            out.append(Finding(Violation.PREVIOUS_HISTORY, stray[0],
                               f"version(s) {stray} are recorded previous but were not champion just before "
                               f"{champion}"))
    return out


def _note(registry: Registry, version: str | None, repair: Repair) -> Repair:
    """Record the repair on the version it concerns: a history event plus readable tags."""
    if version is not None:
        registry.record_event(version, Event.RECONCILED.value, repair.to_dict(), RECONCILE_ACTOR)
        registry.set_version_tags(version, {TAG_RECONCILED: repair.line()[:1000], TAG_RECONCILED_AT: now_iso()})
    log.warning("reconcile %s: %s", registry.model_name, repair.line())
    return repair


def _repair_one(registry: Registry, finding: Finding, aliases: dict[str, str],
                records: dict[str, RolloutRecord]) -> Repair | None:
    v = finding.version
    champion = aliases.get(Alias.CHAMPION.value)
    if finding.violation is Violation.STALE_INTENT:
        # Holding the lease (reconcile runs inside registry.writer) already completed it.
        return Repair(finding.violation, None, "completed the unfinished move recorded in the lease",
                      finding.message)
    if finding.violation is Violation.CHAMPION_RETIRED:
        assert v is not None
        target = restore_target(v, aliases, records)
        if target is None:
            return None
        registry.set_alias(Alias.CHAMPION.value, target, expected=v)
        if aliases.get(Alias.PREVIOUS.value) == target:
            registry.delete_alias(Alias.PREVIOUS.value, target)
        if records[target].state is not S.CHAMPION:
            registry.record_transition(target, S.CHAMPION, f"restored by reconcile: version {v} is "
                                       f"{records[v].state.value}", RECONCILE_ACTOR)
        return _note(registry, v, Repair(
            finding.violation, v, f"champion alias moved {v} -> {target}",
            f"version {v} is {records[v].state.value} and must not serve; {target} is what the recorded "
            "intent/history restores"))
    if finding.violation is Violation.CHAMPION_RECORD:
        assert v is not None
        registry.promote(v, RECONCILE_ACTOR, "reconcile: completing an interrupted promotion (the champion "
                         "alias had already moved)")
        return _note(registry, v, Repair(
            finding.violation, v, f"completed the promotion of version {v} (record -> champion, previous and "
            "canary aliases and old records updated)",
            "the champion alias is the promotion's commit point: it moved, so the records follow it"))
    if finding.violation is Violation.NO_CHAMPION:
        assert v is not None
        registry.set_alias(Alias.CHAMPION.value, v, expected=None)
        return _note(registry, v, Repair(finding.violation, v, f"champion alias set to {v}",
                                         f"version {v} is the latest version recorded champion"))
    if finding.violation is Violation.MANY_CHAMPIONS:
        assert v is not None
        rec = records[v]
        if rec.last_event(Event.ROLLBACK_STARTED.value) is not None or rec.tags.get(TAG_ROLLBACK_REASON):
            registry.record_transition(v, S.ROLLED_BACK, "reconcile: its rollback was interrupted after the "
                                       "champion alias moved", RECONCILE_ACTOR)
            action = f"version {v} recorded rolled_back (completing its rollback)"
        else:
            registry.record_transition(v, S.PREVIOUS, f"reconcile: champion alias is on {champion}",
                                       RECONCILE_ACTOR)
            action = f"version {v} recorded previous"
        return _note(registry, v, Repair(finding.violation, v, action,
                                         f"only {champion} holds the champion alias, which serving follows"))
    if finding.violation is Violation.CANARY_RETIRED or (
        finding.violation is Violation.ALIAS_STATE and v is not None and aliases.get(Alias.CANARY.value) == v
    ):
        assert v is not None
        registry.delete_alias(Alias.CANARY.value, v)
        return _note(registry, v, Repair(finding.violation, v, f"canary alias removed from {v}",
                                         f"version {v} is {records[v].state.value}: it must get no canary traffic"))
    if finding.violation is Violation.PREVIOUS_HISTORY:
        want = expected_previous(champion, records)
        previous = aliases.get(Alias.PREVIOUS.value)
        if previous != want:
            if want is None:
                assert previous is not None
                registry.delete_alias(Alias.PREVIOUS.value, previous)
                action = f"previous alias removed from {previous}"
            else:
                registry.set_alias(Alias.PREVIOUS.value, want, expected=previous)
                action = f"previous alias moved {previous} -> {want}"
            return _note(registry, want or previous, Repair(
                finding.violation, want or previous, action,
                f"version {want} was champion just before {champion} (by the rollout records)"))
        assert v is not None
        registry.record_transition(v, S.ARCHIVED, f"reconcile: not the previous of champion {champion}",
                                   RECONCILE_ACTOR)
        return _note(registry, v, Repair(finding.violation, v, f"version {v} recorded archived",
                                         f"{want} is the previous of champion {champion}, not {v}"))
    return None


def snapshot(registry: ModelRegistry) -> tuple[dict[str, str], dict[str, RolloutRecord]]:
    """The aliases and every version's record, read once."""
    aliases = registry.aliases()
    records = {
        str(mv.version): registry._record_from_tags(str(mv.version), dict(mv.tags or {}))
        for mv in (registry.list_versions() if aliases or registry._model_exists() else [])
    }
    return aliases, records


def findings(registry: ModelRegistry) -> list[Finding]:
    """Check the live registry (for ``mlcd status``)."""
    aliases, records = snapshot(registry)
    try:
        lease_row = read_lease(registry.lease_name, registry.lease_url)
    except Exception as exc:  # noqa: BLE001 - the ledger DB being unreadable must not hide the alias checks
        log.warning("registry lease unreadable: %s", exc)
        lease_row = None
    return check(aliases, records, lease_row)


def reconcile(registry: ModelRegistry, *, dry_run: bool = False) -> dict[str, Any]:
    """Repair every violation, one at a time, under the registry lease; return the repairs and what is left.

    Idempotent: on a consistent registry it changes nothing. ``dry_run`` only reports the findings.
    """
    if dry_run:
        found = findings(registry)
        return {"repairs": [], "left": [f.to_dict() for f in found], "consistent": not found}
    repairs: list[Repair] = []
    lease_row = read_lease(registry.lease_name, registry.lease_url)
    had_intent = bool(lease_row and lease_row.get("intent") and not lease_row.get("held"))
    with registry.writer("reconcile"):  # completes a dead writer's recorded move before anything else
        if had_intent:
            repairs.append(Repair(Violation.STALE_INTENT, None, "completed the unfinished move left in the lease",
                                  f"{(lease_row or {}).get('intent')}"))
        left: list[Finding] = []
        for _ in range(MAX_REPAIRS):
            aliases, records = snapshot(registry)
            found = [f for f in check(aliases, records) if f.violation is not Violation.STALE_INTENT]
            if not found:
                left = []
                break
            repaired = None
            for finding in found:
                repaired = _repair_one(registry, finding, aliases, records)
                if repaired is not None:
                    repairs.append(repaired)
                    break
            if repaired is None:  # nothing left that a rule can repair: report it for a person
                left = found
                break
        else:
            left = check(*snapshot(registry))
    return {"repairs": [r.to_dict() | {"line": r.line()} for r in repairs], "left": [f.to_dict() for f in left],
            "consistent": not left}


__all__ = ["Finding", "Repair", "check", "expected_previous", "findings", "reconcile", "restore_target", "snapshot"]
