"""The model registry as mlcd uses it: MLflow registered-model aliases plus a per-version rollout record.

Aliases (``champion``, ``canary``, ``previous``) are what serving loads; the rollout record (state and history,
kept in model-version tags) is what the canary task, the guard and people read. Three rules keep them safe:

* **Idempotent.** A training run maps to one version (found again by ``run_id``), and every method can be
  re-run after a crash: each step checks whether it is already done.
* **Compare then set.** An alias moves only when it still points where the caller expects
  (:class:`StaleAliasError` otherwise). MLflow has no atomic compare-and-swap, so a tiny window remains
  between read and write; the DAGs run one at a time, which closes it in practice.
* **No lost history.** Each history entry is its own tag (``mlcd.h.<ms>.<rand>``), so two writers (the canary
  task and the guard) never overwrite each other's entries. The state is the replay of those entries through
  the state machine: an entry whose ``from`` no longer matches (it lost a race) is ignored, so both writers
  read the same state. ``mlcd.state`` and the ``mlcd.history`` JSON are readable views of the same thing.

Which version was champion when is derived from the versions' transitions (entering/leaving ``champion``),
which MLflow itself does not keep.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar

from mlcd.registry.errors import RegistryUnavailableError, RolloutError, StaleAliasError
from mlcd.registry.state import (
    STATE_ALIAS,
    IllegalTransitionError,
    RolloutRecord,
    RolloutState,
    check_transition,
    parse_state,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

ALIASES = ("champion", "canary", "previous")
TAG_STATE = "mlcd.state"
TAG_HISTORY = "mlcd.history"
TAG_ENTRY_PREFIX = "mlcd.h."
TAG_RUN_ID = "mlcd.run_id"
TAG_VERDICT = "mlcd.verdict"
TAG_REASONS = "mlcd.reasons"
TAG_METRICS = "mlcd.metrics"
TAG_P_VALUE = "mlcd.p_value"
TAG_SNAPSHOT = "mlcd.snapshot_id"
TAG_DAG_RUN = "mlcd.dag_run_id"
TAG_CODE_VERSION = "mlcd.code_version"
TAG_PROMOTED_BY = "mlcd.promoted_by"
TAG_PROMOTED_AT = "mlcd.promoted_at"
TAG_ROLLBACK_REASON = "mlcd.rollback_reason"
TAG_ROLLBACK_EVIDENCE = "mlcd.rollback_evidence"

# MLflow refuses version tag values over 100,000 characters; stay well under and trim deterministically.
MAX_HISTORY_VIEW_CHARS = 50_000
MAX_TEXT_CHARS = 1_000
MAX_DETAILS_CHARS = 8_000

_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,255}$")
_ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_VERSION_RE = re.compile(r"^[1-9][0-9]{0,9}$")


# ---------------------------------------------------------------------------------------------- validation
def validate_model_name(name: str) -> str:
    if not isinstance(name, str) or not _MODEL_NAME_RE.match(name):
        raise ValueError(
            f"invalid model name {name!r}: use letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def validate_alias(alias: str) -> str:
    if (
        not isinstance(alias, str)
        or not _ALIAS_RE.match(alias)
        or alias == "latest"
        or re.fullmatch(r"v\d+", alias)
    ):
        raise ValueError(f"invalid alias {alias!r}: lower-case letters, digits, '_' or '-'; not 'latest' or 'v<N>'")
    return alias


def validate_version(version: str | int) -> str:
    text = str(version)
    if not _VERSION_RE.match(text):
        raise ValueError(f"invalid model version {version!r}: expected a positive integer")
    return text


def validate_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not _RUN_ID_RE.match(run_id):
        raise ValueError(f"invalid MLflow run id {run_id!r}")
    return run_id


# ---------------------------------------------------------------------------------------------- helpers
def now_iso() -> str:
    """UTC timestamp with milliseconds, sortable as text."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _clip(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 12] + "…(clipped)"


def compact_json(value: Any, limit: int | None = None) -> str:
    """JSON without spaces; over ``limit`` it becomes a marker that keeps the head, so it never breaks a tag."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)
    if limit is not None and len(text) > limit:
        text = json.dumps({"clipped": True, "head": text[: limit - 40]}, separators=(",", ":"))
    return text


def _one_line(err: BaseException) -> str:
    """The cause of a connection failure in a few words (MLflow wraps urllib3's very long messages)."""
    text = str(err)
    for needle in ("Connection refused", "Read timed out", "timed out", "Connection reset", "Max retries exceeded",
                   "RemoteDisconnected", "Name or service not known"):
        if needle in text:
            return needle
    m = re.search(r"error code (\d{3})", text)
    if m:
        return f"HTTP {m.group(1)}"
    return _clip(text.splitlines()[0] if text else type(err).__name__, 160)


def _is_unavailable(err: BaseException) -> bool:
    """True for transport failures and 5xx answers: the server is down or restarting, not a logic error."""
    try:
        import requests

        if isinstance(err, requests.exceptions.RequestException):
            return True
    except ImportError:  # pragma: no cover - requests ships with mlflow
        pass
    if isinstance(err, ConnectionError | TimeoutError):
        return True
    text = str(err)
    if "API request to" in text and "failed with exception" in text:
        return True
    return bool(re.search(r"failed with error code 5\d\d", text))


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


# ---------------------------------------------------------------------------------------------- registry
class ModelRegistry:
    """One registered model in MLflow, moved by aliases and recorded in each version's rollout record.

    Args:
        tracking_uri: the MLflow server (``http://127.0.0.1:5000``); also used as the registry URI.
        model_name: the registered model's name.
        client: an ``MlflowClient`` built elsewhere (e.g. by ``MlflowHook`` with a token); by default one is
            built from ``tracking_uri``.
    """

    def __init__(self, tracking_uri: str, model_name: str, client: Any = None) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.model_name = validate_model_name(model_name)
        self.client = client or MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def __repr__(self) -> str:
        return f"ModelRegistry({self.tracking_uri!r}, {self.model_name!r})"

    # -- plumbing ---------------------------------------------------------------------------------------
    def _call(self, action: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call MLflow; a server that is down or restarting becomes one readable :class:`RegistryUnavailableError`."""
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # MlflowException, requests errors, OSError
            if _is_unavailable(err):
                raise RegistryUnavailableError(
                    f"MLflow server at {self.tracking_uri} is unavailable while {action} "
                    f"({_one_line(err)}); retry when it is back (registry moves are safe to re-run)"
                ) from None
            raise

    @staticmethod
    def _error_code(err: BaseException) -> str:
        return str(getattr(err, "error_code", ""))

    def ensure_registered_model(self) -> None:
        """Create the registered model if missing (idempotent)."""
        from mlflow.exceptions import MlflowException

        try:
            self._call("creating the registered model", self.client.create_registered_model, self.model_name)
        except MlflowException as err:
            if "ALREADY_EXISTS" not in self._error_code(err):
                raise

    def aliases(self) -> dict[str, str]:
        """All aliases of the model: alias → version (empty when the model is not registered yet)."""
        from mlflow.exceptions import MlflowException

        try:
            rm = self._call("reading aliases", self.client.get_registered_model, self.model_name)
        except MlflowException as err:
            if self._error_code(err) == "RESOURCE_DOES_NOT_EXIST":
                return {}
            raise
        return {str(k): str(v) for k, v in (rm.aliases or {}).items()}

    def get_alias_version(self, alias: str) -> str | None:
        """The version behind ``alias``, or None when the alias (or the model) does not exist."""
        return self.aliases().get(validate_alias(alias))

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
        self._call(f"removing alias {alias}", self.client.delete_registered_model_alias, self.model_name, alias)

    # -- versions ---------------------------------------------------------------------------------------
    def find_version_by_run(self, run_id: str) -> str | None:
        """The version registered from ``run_id`` (the lowest, should a race ever have made two)."""
        run_id = validate_run_id(run_id)
        found = self._call(
            "searching versions",
            self.client.search_model_versions,
            f"name='{self.model_name}' and run_id='{run_id}'",
        )
        versions = sorted(int(mv.version) for mv in found)
        if len(versions) > 1:
            log.warning("run %s has %d versions %s; using %s", run_id, len(versions), versions, versions[0])
        return str(versions[0]) if versions else None

    def _resolve_source(self, run_id: str, model_uri: str) -> tuple[str, str | None]:
        """``(source, model_id)`` for ``create_model_version``, as ``mlflow.register_model`` would.

        MLflow 3 stores a model logged with ``name=`` as a LoggedModel outside the run's artifacts, so a
        ``runs:/<id>/<name>`` URI is resolved to ``models:/<model_id>``.
        """
        if model_uri.startswith("runs:/"):
            rest = model_uri[len("runs:/") :]
            uri_run, _, path = rest.partition("/")
            path = path.strip("/")
            run = self._call("reading the training run", self.client.get_run, uri_run)
            outputs = getattr(run, "outputs", None)
            model_ids = [o.model_id for o in (getattr(outputs, "model_outputs", None) or [])]
            for model_id in reversed(model_ids):  # the latest logged wins, as in mlflow.register_model
                lm = self._call("reading the logged model", self.client.get_logged_model, model_id)
                if lm.name == path:
                    return f"models:/{model_id}", model_id
            # An MLflow 2-style model stored among the run's own artifacts.
            return f"{run.info.artifact_uri.rstrip('/')}/{path}", None
        m = re.fullmatch(r"models:/(m-[0-9a-f]{32})", model_uri)
        if m:
            return model_uri, m.group(1)
        return model_uri, None

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

    def get_version_info(self, version: str) -> dict[str, Any]:
        """``{"version", "run_id", "source", "created", "tags", "aliases"}`` of one version."""
        version = validate_version(version)
        mv = self._call("reading a model version", self.client.get_model_version, self.model_name, version)
        return {
            "version": str(mv.version),
            "run_id": mv.run_id,
            "source": mv.source,
            "created": _ms_iso(mv.creation_timestamp),
            "tags": dict(mv.tags or {}),
            "aliases": list(mv.aliases or []),
        }

    def list_versions(self) -> list[Any]:
        """Every version of the model (MLflow ``ModelVersion`` objects), oldest first."""
        found = self._call(
            "listing versions", self.client.search_model_versions, f"name='{self.model_name}'"
        )
        return sorted(found, key=lambda mv: int(mv.version))

    def _version_tags(self, version: str) -> dict[str, str]:
        mv = self._call("reading a model version", self.client.get_model_version, self.model_name, version)
        return dict(mv.tags or {})

    def _set_tag(self, version: str, key: str, value: str) -> None:
        self._call(
            f"tagging version {version}",
            self.client.set_model_version_tag,
            self.model_name,
            version,
            key,
            value,
        )

    def set_version_tags(self, version: str, tags: dict[str, Any]) -> None:
        """Set plain (non-record) tags on a version."""
        version = validate_version(version)
        for key, value in tags.items():
            if key == TAG_STATE or key == TAG_HISTORY or key.startswith(TAG_ENTRY_PREFIX):
                raise ValueError(f"tag {key} is owned by the rollout record")
            self._set_tag(version, key, str(value))

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

    # -- moves ------------------------------------------------------------------------------------------
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
        holder = self.get_alias_version("canary")
        expected: str | None = None
        if holder is not None and holder != version:
            if self.get_state(holder).state is RolloutState.CANARY:
                raise StaleAliasError(
                    f"canary alias is held by version {holder}, still in rollout: finish or roll it back first"
                )
            expected = holder
        # State first: a crash before the alias leaves a canary without traffic, which the re-run completes.
        record = self.record_transition(version, RolloutState.CANARY, reason, actor, dag_run_id)
        self.set_alias("canary", version, expected=expected)
        return record

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
            if aliases.get("champion") != version:
                raise RolloutError(
                    f"version {version} is recorded champion but the champion alias points at "
                    f"{aliases.get('champion')}; run `mlcd status` and fix by hand"
                )
            if aliases.get("canary") == version:
                self.delete_alias("canary", version)
            return record
        if record.state is RolloutState.REGISTERED:
            if "champion" not in aliases:
                return self.bootstrap_champion(version, actor, reason, dag_run_id)
            record = self.record_transition(
                version, RolloutState.CANARY, f"canary skipped: {reason}", actor, dag_run_id
            )
        if record.state not in (RolloutState.CANARY, RolloutState.PREVIOUS):
            check_transition(record.state, RolloutState.CHAMPION)  # raises with the allowed moves

        intent = record.last_event("promote_started")
        if aliases.get("champion") == version and intent is not None:
            old_champion = intent["d"].get("old_champion")
            old_previous = intent["d"].get("old_previous")
        else:
            old_champion = aliases.get("champion")
            old_previous = aliases.get("previous")
            self.record_event(
                version,
                "promote_started",
                {"old_champion": old_champion, "old_previous": old_previous},
                actor,
                dag_run_id,
            )
        # 1. previous ← old champion (serving ignores previous, so this step alone changes no traffic).
        if old_champion is not None and old_champion != version:
            self.set_alias("previous", old_champion, expected=old_previous)
        elif old_previous == version:
            self.delete_alias("previous", version)
        # 2. champion ← version: the commit point.
        self.set_alias("champion", version, expected=old_champion)
        # 3. the canary slot is free again.
        if self.get_alias_version("canary") == version:
            self.delete_alias("canary", version)
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
        if record.state is RolloutState.CHAMPION and self.get_alias_version("champion") == version:
            return record
        if record.state is not RolloutState.REGISTERED:
            check_transition(record.state, RolloutState.CHAMPION)
        self.set_alias("champion", version, expected=None)  # refuses when a champion exists
        self.set_version_tags(version, {TAG_PROMOTED_BY: actor, TAG_PROMOTED_AT: now_iso()})
        return self.record_transition(version, RolloutState.CHAMPION, reason, actor, dag_run_id)

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
            if self.get_alias_version("canary") == version:
                self.delete_alias("canary", version)
            return self.record_transition(version, RolloutState.ROLLED_BACK, reason, actor, dag_run_id, details)
        if record.state is not RolloutState.CHAMPION:
            raise RolloutError(
                f"version {version} is {record.state.value}: only a canary or a champion can be rolled back"
            )
        aliases = self.aliases()
        intent = record.last_event("rollback_started")
        if aliases.get("champion") == version:
            target = aliases.get("previous")
            if target is None:
                raise RolloutError(
                    f"version {version} is champion with no previous version to restore: roll forward instead"
                )
            self.record_event(version, "rollback_started", {"restore": target}, actor, dag_run_id)
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
        self.set_alias("champion", target, expected=version)  # the commit: serving follows champion
        if self.get_alias_version("previous") == target:
            self.delete_alias("previous", target)
        self.record_transition(
            target, RolloutState.CHAMPION, f"restored by rollback of version {version}: {reason}", actor, dag_run_id
        )
        return self.record_transition(version, RolloutState.ROLLED_BACK, reason, actor, dag_run_id, details)

    # -- reading --------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Aliases and versions with their states and verdicts, and any disagreement between the two."""
        aliases = self.aliases()
        versions = []
        records: dict[str, RolloutRecord] = {}
        for mv in self.list_versions() if aliases or self._model_exists() else []:
            v = str(mv.version)
            rec = self._record_from_tags(v, dict(mv.tags or {}))
            records[v] = rec
            last = rec.transitions()[-1] if rec.transitions() else {}
            versions.append({
                "version": v,
                "state": rec.state.value,
                "aliases": sorted(a for a, av in aliases.items() if av == v),
                "verdict": rec.tags.get(TAG_VERDICT),
                "p_value": rec.tags.get(TAG_P_VALUE),
                "accuracy": _accuracy(rec.tags.get(TAG_METRICS)),
                "run_id": mv.run_id,
                "created": _ms_iso(mv.creation_timestamp),
                "since": last.get("t"),
                "reason": last.get("why"),
            })
        problems = []
        for alias in ALIASES:
            v = aliases.get(alias)
            if v is not None and v in records and STATE_ALIAS.get(records[v].state) != alias:
                problems.append(f"alias {alias} -> version {v}, but its state is {records[v].state.value}")
        for v, rec in records.items():
            alias = STATE_ALIAS.get(rec.state)
            if alias and aliases.get(alias) != v:
                problems.append(f"version {v} is {rec.state.value} but alias {alias} -> {aliases.get(alias)}")
        return {
            "model_name": self.model_name,
            "tracking_uri": self.tracking_uri,
            "aliases": {a: aliases.get(a) for a in ALIASES} | {a: v for a, v in aliases.items() if a not in ALIASES},
            "versions": versions,
            "consistent": not problems,
            "problems": problems,
        }

    def _model_exists(self) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self._call("reading the model", self.client.get_registered_model, self.model_name)
            return True
        except MlflowException as err:
            if self._error_code(err) == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise

    def history(self) -> list[dict[str, Any]]:
        """Every accepted history entry of every version, oldest first, each with its ``version``."""
        if not self._model_exists():
            return []
        out = []
        for mv in self.list_versions():
            rec = self._record_from_tags(str(mv.version), dict(mv.tags or {}))
            out.extend({"version": rec.version, **e} for e in rec.history)
        return sorted(out, key=lambda e: (e.get("t", ""), int(e["version"])))

    def alias_history(self) -> list[dict[str, Any]]:
        """Which version held which alias when: intervals ``{"alias", "version", "start", "end", ...}``.

        Derived from the versions' state transitions (entering ``champion`` sets the champion alias, leaving
        it unsets it), so it is as complete as the records and needs no size-limited model-level tag.
        ``end`` is None while the version still holds the alias.
        """
        intervals: list[dict[str, Any]] = []
        for entry in self.history():
            if "to" not in entry:
                continue
            left = STATE_ALIAS.get(parse_state(entry["from"])) if entry.get("from") else None
            entered = STATE_ALIAS.get(parse_state(entry["to"]))
            if left:
                for iv in reversed(intervals):
                    if iv["alias"] == left and iv["version"] == entry["version"] and iv["end"] is None:
                        iv["end"] = entry["t"]
                        iv["end_reason"] = entry.get("why")
                        break
            if entered:
                intervals.append({
                    "alias": entered,
                    "version": entry["version"],
                    "start": entry["t"],
                    "end": None,
                    "reason": entry.get("why"),
                    "actor": entry.get("by"),
                    "dag_run_id": entry.get("dag_run"),
                    "end_reason": None,
                })
        # A previous version loses the alias (without a state change) when the next one takes it.
        for alias in ("previous",):
            held = [iv for iv in intervals if iv["alias"] == alias]
            for a, b in zip(held, held[1:], strict=False):
                if a["end"] is None or a["end"] > b["start"]:
                    a["end"] = b["start"]
                    a["end_reason"] = a["end_reason"] or f"alias taken by version {b['version']}"
        return intervals

    def champion_at(self, when: str) -> str | None:
        """The version that was champion at ISO time ``when`` (None before the first one)."""
        for iv in self.alias_history():
            if iv["alias"] == "champion" and iv["start"] <= when and (iv["end"] is None or when < iv["end"]):
                return str(iv["version"])
        return None


def _ms_iso(ms: int | None) -> str | None:
    if not ms:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _accuracy(metrics_json: str | None) -> float | None:
    if not metrics_json:
        return None
    try:
        value = json.loads(metrics_json).get("accuracy")
        return None if value is None else float(value)
    except (ValueError, AttributeError, TypeError):
        return None
