"""Plumbing shared by the registry's parts: validation, MLflow calls that fail in one line, versions and tags.

Nothing here moves an alias or writes the rollout record; :mod:`mlcd.registry.journal` (the record),
:mod:`mlcd.registry.moves` (alias moves under the lease) and :mod:`mlcd.registry.reporting` build on it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from mlcd.registry.errors import RegistryUnavailableError
from mlcd.registry.tags import is_record_tag

log = logging.getLogger("mlcd.registry.client")
T = TypeVar("T")


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


def _ms_iso(ms: int | None) -> str | None:
    if not ms:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# ---------------------------------------------------------------------------------------------- plumbing
class RegistryBase:
    """One registered model in MLflow: the client, readable failures, aliases (read only), versions and tags.

    Args:
        tracking_uri: the MLflow server (``http://127.0.0.1:5000``); also used as the registry URI.
        model_name: the registered model's name.
        client: an ``MlflowClient`` built elsewhere (e.g. by ``MlflowHook`` with a token); by default one is
            built from ``tracking_uri``.
        lease_url: the SQL URL (or SQLite path) of the ledger database holding the registry lease; default
            ``MLCD_LEDGER_URL``, else the ledger's SQLite file (see :mod:`mlcd.registry.lease`).
    """

    def __init__(
        self, tracking_uri: str, model_name: str, client: Any = None, lease_url: str | None = None
    ) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.model_name = validate_model_name(model_name)
        self.client = client or MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.lease_url = lease_url

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
            if is_record_tag(key):
                raise ValueError(f"tag {key} is owned by the rollout record")
            self._set_tag(version, key, str(value))

    def set_version_description(self, version: str, description: str) -> None:
        """Set the version's description (MLflow's UI renders it as Markdown on the version's page)."""
        version = validate_version(version)
        self._call(f"describing version {version}", self.client.update_model_version, self.model_name, version,
                   description)

    def version_description(self, version: str) -> str:
        version = validate_version(version)
        mv = self._call("reading a model version", self.client.get_model_version, self.model_name, version)
        return str(mv.description or "")

    def _model_exists(self) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self._call("reading the model", self.client.get_registered_model, self.model_name)
            return True
        except MlflowException as err:
            if self._error_code(err) == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise
