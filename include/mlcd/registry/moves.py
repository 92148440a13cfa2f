"""Alias moves: start a canary, promote, bootstrap, reject, roll back; each under the registry lease.

* **One writer at a time.** Every move holds the lease in the ledger database (:mod:`mlcd.registry.lease`) for
  this model, and checks its fencing token right before each alias write.
* **Intent first.** A move records what it is about to do (in the lease row, and as a ``*_started`` event in the
  version's record) before touching an alias; a re-run, or the next writer after a crash, completes it.
* **Compare then set.** An alias moves only when it still points where the caller expects
  (:class:`StaleAliasError` otherwise).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from mlcd.registry import lease as _lease
from mlcd.registry.base import MAX_DETAILS_CHARS, _clip, compact_json, log, now_iso, validate_alias, validate_version
from mlcd.registry.errors import RegistryUnavailableError, RolloutError, StaleAliasError
from mlcd.registry.journal import JournalMixin
from mlcd.registry.state import IllegalTransitionError, RolloutRecord, RolloutState, check_transition
from mlcd.registry.tags import (
    TAG_PROMOTED_AT,
    TAG_PROMOTED_BY,
    TAG_REASONS,
    TAG_ROLLBACK_EVIDENCE,
    TAG_ROLLBACK_REASON,
    Alias,
    Event,
)

F = TypeVar("F", bound=Callable[..., Any])


def _move(fn: F) -> F:
    """Run the method as one move under the registry lease, its call recorded as the lease's intent."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(self: AliasMovesMixin, *args: Any, **kwargs: Any) -> Any:
        bound = sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        call = {k: v for k, v in bound.arguments.items() if k != "self"}
        with self.writer(fn.__name__, **call):
            return fn(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class AliasMovesMixin(JournalMixin):
    """The moves of the rollout, each one idempotent, safe to re-run after a crash, and one writer at a time."""

    lease_ttl_s: float = _lease.DEFAULT_TTL_S
    lease_wait_s: float = _lease.DEFAULT_WAIT_S

    # -- the lease --------------------------------------------------------------------------------------
    @property
    def lease_name(self) -> str:
        return f"registry:{self.model_name}"

    @contextmanager
    def writer(self, op: str, **args: Any) -> Iterator[_lease.Lease]:
        """Hold the registry lease for one move named ``op`` (re-entrant: nested moves share it).

        The outermost holder first completes a move a previous holder left unfinished (its intent is still in
        the lease row), then records its own intent, runs the block, and clears the intent only on success, so
        a move that failed half-way (MLflow went down) is completed by the next writer or a re-run.
        """
        with _lease.hold(
            self.lease_name, url=self.lease_url, ttl_s=self.lease_ttl_s, wait_s=self.lease_wait_s
        ) as held:
            outer = held.depth == 1
            if outer and held.pending_intent:
                self._complete_intent(held.pending_intent)
                held.pending_intent = None
            if outer:
                held.record_intent({"op": op, "args": args, "at": now_iso()})
            try:
                yield held
            except (RegistryUnavailableError, OSError):
                raise  # cut off half-way: the intent stays for the next writer or the re-run to complete
            except BaseException:
                if outer:  # refused (stale alias, illegal move): nothing to complete, the caller decides again
                    held.clear_intent()
                raise
            if outer:
                held.clear_intent()

    # Moves that a recorded intent may name; each is idempotent, so completing one twice is harmless.
    _INTENT_OPS = frozenset(
        {"set_alias", "delete_alias", "start_canary", "promote", "bootstrap_champion", "rollback", "reconcile"}
    )

    def _complete_intent(self, intent: dict[str, Any]) -> None:
        """Finish the move a writer recorded but did not complete (it died, or MLflow failed under it)."""
        op, args = intent.get("op"), dict(intent.get("args") or {})
        if op not in self._INTENT_OPS:
            log.warning("registry lease: unknown recorded intent %r ignored", op)
            return
        log.warning("registry lease: completing the unfinished %s %s recorded at %s", op, args, intent.get("at"))
        try:
            getattr(self, str(op))(**args)
        except RegistryUnavailableError:
            raise  # MLflow is still down: the intent stays, the next writer tries again
        except (RolloutError, StaleAliasError, IllegalTransitionError, ValueError, TypeError) as err:
            # The world moved on (someone completed or overrode it): deciding again from the aliases is right.
            log.warning("registry lease: recorded %s no longer applies: %s", op, str(err).splitlines()[0])

    def _fence(self) -> None:
        """Right before an alias write: stop if our lease expired and another writer holds a newer token."""
        held = _lease.current_lease(self.lease_name)
        if held is not None:
            held.check()

    @staticmethod
    def _open_intent(record: RolloutRecord, event: str) -> dict[str, Any] | None:
        """The details of ``event`` if it is newer than the record's last transition (a move still in flight)."""
        for entry in reversed(record.history):
            if "to" in entry:
                return None
            if entry.get("event") == event:
                return dict(entry.get("d") or {})
        return None

    # -- alias primitives -------------------------------------------------------------------------------

    @_move
    def set_alias(self, alias: str, version: str, expected: str | None) -> None:
        """Point ``alias`` at ``version`` only if it still points at ``expected`` (None: unset).

        Already pointing at ``version`` is success (a re-run). Raises :class:`StaleAliasError` otherwise.
        """
        alias, version = validate_alias(alias), validate_version(version)
        expected = None if expected is None else validate_version(expected)
        current = self.get_alias_version(alias)
        if current == version:
            return
        if current != expected:
            raise StaleAliasError(
                f"alias '{alias}' of {self.model_name} points at version {current}, expected {expected}: "
                f"refusing to move it to {version} (another run moved it; re-read and decide again)"
            )
        self._fence()
        self._call(
            f"setting alias {alias} -> {version}",
            self.client.set_registered_model_alias,
            self.model_name,
            alias,
            version,
        )
        after = self.get_alias_version(alias)
        if after != version:  # a writer slipped in between our read and write
            raise StaleAliasError(f"alias '{alias}' moved to {after} while setting it to {version}")

    @_move
    def delete_alias(self, alias: str, expected: str) -> None:
        """Remove ``alias`` if it points at ``expected``; already gone is success."""
        alias, expected = validate_alias(alias), validate_version(expected)
        current = self.get_alias_version(alias)
        if current is None:
            return
        if current != expected:
            raise StaleAliasError(
                f"alias '{alias}' of {self.model_name} points at version {current}, expected {expected}: "
                "refusing to remove it"
            )
        self._fence()
        self._call(f"removing alias {alias}", self.client.delete_registered_model_alias, self.model_name, alias)

    # -- moves ------------------------------------------------------------------------------------------
    @_move
    def start_canary(
        self, version: str, actor: str, reason: str, dag_run_id: str | None = None
    ) -> RolloutRecord:
        """``registered → canary`` and the ``canary`` alias on it. Re-running completes a half-done start.

        A canary alias still held by another version *in rollout* is refused (:class:`StaleAliasError`); a
        leftover alias of a finished version is replaced.
        """
        version = validate_version(version)
        record = self.get_state(version)
        if record.state not in (RolloutState.REGISTERED, RolloutState.CANARY):
            check_transition(record.state, RolloutState.CANARY)
        holder = self.get_alias_version(Alias.CANARY)
        expected: str | None = None
        if holder is not None and holder != version:
            if self.get_state(holder).state is RolloutState.CANARY:
                raise StaleAliasError(
                    f"canary alias is held by version {holder}, still in rollout: finish or roll it back first"
                )
            expected = holder
        # State first: a crash before the alias leaves a canary without traffic, which the re-run completes.
        record = self.record_transition(version, RolloutState.CANARY, reason, actor, dag_run_id)
        self.set_alias(Alias.CANARY, version, expected=expected)
        return record

    @_move
    def promote(
        self,
        version: str,
        actor: str,
        reason: str,
        dag_run_id: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> RolloutRecord:
        """Make ``version`` champion: ``previous`` ← old champion, ``champion`` ← version, canary alias removed.

        Works from ``canary`` (the normal end of a rollout), ``registered`` (canary skipped by hand: recorded
        as such) and ``previous`` (promoted back by hand). Alias moves are compare-then-set against what the
        aliases were when the promotion started, recorded first as a ``promote_started`` event, so a crash at
        any point can be re-run and converges. ``champion`` moves last among the aliases: it is the commit.
        """
        version = validate_version(version)
        record = self.get_state(version)
        aliases = self.aliases()
        if record.state is RolloutState.CHAMPION:
            if aliases.get(Alias.CHAMPION) != version:
                raise RolloutError(
                    f"version {version} is recorded champion but the champion alias points at "
                    f"{aliases.get('champion')}; run `mlcd status` and fix by hand"
                )
            if aliases.get(Alias.CANARY) == version:
                self.delete_alias(Alias.CANARY, version)
            return record
        if record.state is RolloutState.REGISTERED:
            if Alias.CHAMPION not in aliases:
                return self.bootstrap_champion(version, actor, reason, dag_run_id)
            record = self.record_transition(
                version, RolloutState.CANARY, f"canary skipped: {reason}", actor, dag_run_id
            )
        if record.state not in (RolloutState.CANARY, RolloutState.PREVIOUS):
            check_transition(record.state, RolloutState.CHAMPION)  # raises with the allowed moves

        # Recorded intent wins while it still describes the aliases: a re-run after a crash between steps 1 and 2
        # must not take the half-moved ``previous`` as the old one (the real old previous would never be archived).
        intent = self._open_intent(record, Event.PROMOTE_STARTED)
        if intent is not None and aliases.get(Alias.CHAMPION) in (version, intent.get("old_champion")):
            old_champion = intent.get("old_champion")
            old_previous = intent.get("old_previous")
        else:
            old_champion = aliases.get(Alias.CHAMPION)
            old_previous = aliases.get(Alias.PREVIOUS)
            self.record_event(
                version,
                Event.PROMOTE_STARTED.value,
                {"old_champion": old_champion, "old_previous": old_previous},
                actor,
                dag_run_id,
            )
        # 1. previous ← old champion (serving ignores previous, so this step alone changes no traffic).
        if old_champion is not None and old_champion != version:
            self.set_alias(Alias.PREVIOUS, old_champion, expected=old_previous)
        elif old_previous == version:
            self.delete_alias(Alias.PREVIOUS, version)
        # 2. champion ← version: the commit point.
        self.set_alias(Alias.CHAMPION, version, expected=old_champion)
        # 3. the canary slot is free again.
        if self.get_alias_version(Alias.CANARY) == version:
            self.delete_alias(Alias.CANARY, version)
        # 4. records follow the aliases.
        if old_champion is not None and old_champion != version:
            self.record_transition(
                old_champion, RolloutState.PREVIOUS, f"replaced by version {version}", actor, dag_run_id
            )
        if old_previous is not None and old_previous not in (version, old_champion):
            if self.get_state(old_previous).state is RolloutState.PREVIOUS:
                self.record_transition(
                    old_previous, RolloutState.ARCHIVED, f"previous alias taken by {old_champion}", actor,
                    dag_run_id,
                )
        self.set_version_tags(version, {TAG_PROMOTED_BY: actor, TAG_PROMOTED_AT: now_iso()})
        return self.record_transition(version, RolloutState.CHAMPION, reason, actor, dag_run_id, details)

    @_move
    def bootstrap_champion(
        self,
        version: str,
        actor: str,
        reason: str = "first model: no champion to compare with",
        dag_run_id: str | None = None,
    ) -> RolloutRecord:
        """``registered → champion`` for the very first model (no champion alias yet)."""
        version = validate_version(version)
        record = self.get_state(version)
        if record.state is RolloutState.CHAMPION and self.get_alias_version(Alias.CHAMPION) == version:
            return record
        if record.state is not RolloutState.REGISTERED:
            check_transition(record.state, RolloutState.CHAMPION)
        self.set_alias(Alias.CHAMPION, version, expected=None)  # refuses when a champion exists
        self.set_version_tags(version, {TAG_PROMOTED_BY: actor, TAG_PROMOTED_AT: now_iso()})
        return self.record_transition(version, RolloutState.CHAMPION, reason, actor, dag_run_id)

    @_move
    def reject(
        self,
        version: str,
        verdict_reasons: list[str] | str,
        actor: str,
        dag_run_id: str | None = None,
    ) -> RolloutRecord:
        """``registered → rejected`` with the gate's reasons (no alias is touched)."""
        version = validate_version(version)
        reasons = [verdict_reasons] if isinstance(verdict_reasons, str) else list(verdict_reasons)
        self.set_version_tags(version, {TAG_REASONS: compact_json(reasons, MAX_DETAILS_CHARS)})
        return self.record_transition(
            version, RolloutState.REJECTED, "gate rejected: " + "; ".join(reasons), actor, dag_run_id
        )

    @_move
    def rollback(
        self,
        version: str,
        reason: str,
        evidence: dict[str, Any] | None,
        actor: str,
        dag_run_id: str | None = None,
    ) -> RolloutRecord:
        """Take ``version`` out of service and record why.

        A canary loses the ``canary`` alias. A champion (in its bake period) gives ``champion`` back to the
        ``previous`` version, which becomes champion again. A version already rolled back is left as is, so
        a second rollback does nothing. Re-running after a crash converges (intent recorded first).
        """
        version = validate_version(version)
        record = self.get_state(version)
        if record.state is RolloutState.ROLLED_BACK:
            return record
        details = {"evidence": evidence or {}}
        if record.state is RolloutState.CANARY:
            self.set_version_tags(version, {
                TAG_ROLLBACK_REASON: _clip(reason),
                TAG_ROLLBACK_EVIDENCE: compact_json(evidence or {}, MAX_DETAILS_CHARS * 2),
            })
            if self.get_alias_version(Alias.CHAMPION) == version:
                # A promotion was interrupted after its commit: undo it from its recorded intent, or the champion
                # alias would stay on a version this rollback is about to mark rolled_back.
                self._undo_promotion(record, version, reason, actor, dag_run_id)
            if self.get_alias_version(Alias.CANARY) == version:
                self.delete_alias(Alias.CANARY, version)
            return self.record_transition(version, RolloutState.ROLLED_BACK, reason, actor, dag_run_id, details)
        if record.state is not RolloutState.CHAMPION:
            raise RolloutError(
                f"version {version} is {record.state.value}: only a canary or a champion can be rolled back"
            )
        aliases = self.aliases()
        intent = record.last_event(Event.ROLLBACK_STARTED.value)
        if aliases.get(Alias.CHAMPION) == version:
            target = aliases.get(Alias.PREVIOUS)
            if target is None:
                raise RolloutError(
                    f"version {version} is champion with no previous version to restore: roll forward instead"
                )
            self.record_event(version, Event.ROLLBACK_STARTED.value, {"restore": target}, actor, dag_run_id)
        elif intent is not None:
            target = str(intent["d"]["restore"])
        else:
            raise RolloutError(
                f"version {version} is recorded champion but the alias points at {aliases.get('champion')}"
            )
        self.set_version_tags(version, {
            TAG_ROLLBACK_REASON: _clip(reason),
            TAG_ROLLBACK_EVIDENCE: compact_json(evidence or {}, MAX_DETAILS_CHARS * 2),
        })
        self.set_alias(Alias.CHAMPION, target, expected=version)  # the commit: serving follows champion
        if self.get_alias_version(Alias.PREVIOUS) == target:
            self.delete_alias(Alias.PREVIOUS, target)
        self.record_transition(
            target, RolloutState.CHAMPION, f"restored by rollback of version {version}: {reason}", actor, dag_run_id
        )
        return self.record_transition(version, RolloutState.ROLLED_BACK, reason, actor, dag_run_id, details)

    def _undo_promotion(
        self, record: RolloutRecord, version: str, reason: str, actor: str, dag_run_id: str | None
    ) -> None:
        """Give ``champion`` (and ``previous``) back to what they were before ``version``'s promotion started."""
        intent = record.last_event(Event.PROMOTE_STARTED.value)
        restore = None if intent is None else (intent.get("d") or {}).get("old_champion")
        old_previous = None if intent is None else (intent.get("d") or {}).get("old_previous")
        if restore is None or str(restore) == version:
            raise RolloutError(
                f"version {version} holds the champion alias with no recorded promotion to undo: "
                "run `mlcd reconcile` to restore a champion"
            )
        restore = str(restore)
        self.record_event(version, Event.ROLLBACK_STARTED.value, {"restore": restore, "undo": "promote"}, actor,
                          dag_run_id)
        self.set_alias(Alias.CHAMPION, restore, expected=version)  # traffic-relevant first: serving follows champion
        if self.get_alias_version(Alias.PREVIOUS) == restore:
            if old_previous is not None and str(old_previous) != restore:
                self.set_alias(Alias.PREVIOUS, str(old_previous), expected=restore)
            else:
                self.delete_alias(Alias.PREVIOUS, restore)
        if self.get_state(restore).state is RolloutState.PREVIOUS:
            self.record_transition(
                restore, RolloutState.CHAMPION,
                f"restored: the promotion of version {version} was interrupted and it was rolled back: {reason}",
                actor, dag_run_id,
            )
