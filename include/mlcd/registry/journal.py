"""The event journal: each version's rollout record (state and history) kept in its MLflow version tags.

Each history entry is its own tag (``mlcd.h.<ms>.<rand>``), so two writers never overwrite each other's
entries. The state is the replay of those entries through the state machine: an entry whose ``from`` no longer
matches (it lost a race) is ignored, so every reader agrees on one state. ``mlcd.state`` and the
``mlcd.history`` JSON are readable views of the same thing, rebuilt on every append.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from typing import Any

from mlcd.registry.base import (
    MAX_DETAILS_CHARS,
    MAX_HISTORY_VIEW_CHARS,
    RegistryBase,
    _clip,
    compact_json,
    log,
    now_iso,
    validate_run_id,
    validate_version,
)
from mlcd.registry.state import (
    IllegalTransitionError,
    RolloutRecord,
    RolloutState,
    check_transition,
    parse_state,
)
from mlcd.registry.tags import TAG_ENTRY_PREFIX, TAG_HISTORY, TAG_RUN_ID, TAG_STATE


def _entry_key(ts_ms: int) -> str:
    # Time first so tag keys sort as history; the random suffix keeps two writers in the same ms apart.
    return f"{TAG_ENTRY_PREFIX}{ts_ms:013d}.{uuid.uuid4().hex[:8]}"


def replay(entries: Iterable[tuple[str, dict[str, Any]]]) -> tuple[RolloutState, list[dict[str, Any]]]:
    """Apply history entries (key order) through the state machine.

    Returns the state and the accepted entries. A transition whose ``from`` does not match the replayed
    state lost a race with another writer and is dropped, so every reader agrees on one state.
    """
    state: RolloutState | None = None
    accepted: list[dict[str, Any]] = []
    for _key, entry in sorted(entries, key=lambda kv: kv[0]):
        if "to" not in entry:
            accepted.append(entry)
            continue
        try:
            dst = parse_state(entry["to"])
        except ValueError:
            continue
        if state is None:
            if dst is RolloutState.REGISTERED:
                state = dst
                accepted.append(entry)
            continue
        src = entry.get("from")
        if src != state.value:
            continue
        try:
            check_transition(state, dst)
        except IllegalTransitionError:
            continue
        state = dst
        accepted.append(entry)
    return state or RolloutState.REGISTERED, accepted


def trim_history(entries: list[dict[str, Any]], limit: int = MAX_HISTORY_VIEW_CHARS) -> list[dict[str, Any]]:
    """Drop the oldest plain events, then the oldest transitions (keeping the first), until the JSON fits."""
    out = list(entries)
    while len(compact_json(out)) > limit and len(out) > 1:
        idx = next((i for i, e in enumerate(out) if "to" not in e), None)
        out.pop(idx if idx is not None else 1)
    return out


class JournalMixin(RegistryBase):
    """Registration and the rollout record: read a version's record, append transitions and events."""

    def register_run_model(self, run_id: str, model_uri: str, tags: dict[str, str] | None = None) -> str:
        """Register the run's model once and return its version.

        Re-running finds the version by ``run_id`` instead of creating another; ``tags`` are (re)applied to
        it, so a re-run also completes tags a crash left out. The rollout record starts as ``registered``.
        """
        run_id = validate_run_id(run_id)
        tags = {str(k): str(v) for k, v in (tags or {}).items()}
        reserved = [k for k in tags if k == TAG_STATE or k == TAG_HISTORY or k.startswith(TAG_ENTRY_PREFIX)]
        if reserved:
            raise ValueError(f"tags {reserved} are owned by the rollout record")
        self.ensure_registered_model()
        version = self.find_version_by_run(run_id)
        if version is None:
            source, model_id = self._resolve_source(run_id, model_uri)
            ts = time.time()
            first = {"t": now_iso(), "to": RolloutState.REGISTERED.value, "why": "registered from training run",
                     "run_id": run_id}
            initial = {
                TAG_RUN_ID: run_id,
                TAG_STATE: RolloutState.REGISTERED.value,
                _entry_key(int(ts * 1000)): compact_json(first),
                TAG_HISTORY: compact_json([first]),
                **tags,
            }
            mv = self._call(
                "creating a model version",
                self.client.create_model_version,
                name=self.model_name,
                source=source,
                run_id=run_id,
                tags=initial,
                model_id=model_id,
            )
            version = str(mv.version)
            log.info("registered %s version %s from run %s", self.model_name, version, run_id)
            return version
        existing = self._version_tags(version)
        if not any(k.startswith(TAG_ENTRY_PREFIX) for k in existing):
            # Created by something else (or an older mlcd): start its record now.
            self._append_entry(version, {"to": RolloutState.REGISTERED.value, "why": "record started", "run_id": run_id})
        for key, value in tags.items():
            if existing.get(key) != value:
                self._set_tag(version, key, value)
        return version

    # -- rollout record ---------------------------------------------------------------------------------
    @staticmethod
    def _record_from_tags(version: str, tags: dict[str, str]) -> RolloutRecord:
        entries = []
        for key, value in tags.items():
            if key.startswith(TAG_ENTRY_PREFIX):
                try:
                    entries.append((key, json.loads(value)))
                except ValueError:
                    log.warning("version %s: unreadable history entry %s ignored", version, key)
        if entries:
            state, history = replay(entries)
        else:
            state = parse_state(tags.get(TAG_STATE, RolloutState.REGISTERED.value))
            history = []
        plain = {k: v for k, v in tags.items() if not k.startswith(TAG_ENTRY_PREFIX) and k != TAG_HISTORY}
        return RolloutRecord(version=version, state=state, history=history, tags=plain)

    def get_state(self, version: str) -> RolloutRecord:
        """The version's rollout state and history (oldest first)."""
        version = validate_version(version)
        return self._record_from_tags(version, self._version_tags(version))

    def _append_entry(self, version: str, entry: dict[str, Any]) -> RolloutRecord:
        ts = time.time()
        entry = {"t": now_iso(), **{k: v for k, v in entry.items() if v is not None}}
        self._set_tag(version, _entry_key(int(ts * 1000)), compact_json(entry, MAX_DETAILS_CHARS * 2))
        record = self.get_state(version)
        # The views are rebuilt from the entries each time, so a lost view update is repaired by the next one.
        if record.tags.get(TAG_STATE) != record.state.value:
            self._set_tag(version, TAG_STATE, record.state.value)
        self._set_tag(version, TAG_HISTORY, compact_json(trim_history(record.history)))
        return record

    def record_transition(
        self,
        version: str,
        to_state: str | RolloutState,
        reason: str,
        actor: str,
        dag_run_id: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> RolloutRecord:
        """Move the version's state, validated by the state machine, with a timestamped history entry.

        Already in ``to_state`` is success (a re-run). Raises :class:`IllegalTransitionError` for a move the
        state machine refuses, and when a concurrent writer's transition won the race.
        """
        version = validate_version(version)
        dst = parse_state(to_state)
        current = self.get_state(version)
        if current.state is dst:
            return current
        check_transition(current.state, dst)
        entry: dict[str, Any] = {
            "from": current.state.value,
            "to": dst.value,
            "why": _clip(reason),
            "by": actor,
            "dag_run": dag_run_id,
        }
        if details:
            entry["d"] = json.loads(compact_json(details, MAX_DETAILS_CHARS))
        record = self._append_entry(version, entry)
        if record.state is not dst:
            raise IllegalTransitionError(
                f"version {version}: {current.state.value} -> {dst.value} lost to a concurrent move; "
                f"the version is now {record.state.value}"
            )
        log.info("%s v%s: %s -> %s (%s, by %s)", self.model_name, version, current.state.value, dst.value,
                 reason, actor)
        return record

    def record_event(
        self,
        version: str,
        event: str,
        details: dict[str, Any] | None = None,
        actor: str | None = None,
        dag_run_id: str | None = None,
    ) -> RolloutRecord:
        """A history entry without a state change (a canary step, an intent before a multi-step move)."""
        version = validate_version(version)
        entry: dict[str, Any] = {"event": event, "by": actor, "dag_run": dag_run_id}
        if details:
            entry["d"] = json.loads(compact_json(details, MAX_DETAILS_CHARS))
        return self._append_entry(version, entry)

