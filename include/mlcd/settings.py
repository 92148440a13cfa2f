"""Deploy-wide switches, read once from ``MLCD_*`` environment variables (or ``[mlcd]`` of airflow.cfg) with
embedded defaults.

Per-task settings are operator arguments and run-time choices are DAG ``Param``s; only what changes
between a laptop and a cluster lives here. Nothing in this module touches the network or a database.
"""

from __future__ import annotations

import configparser
import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_MODEL_NAME = "mnist-cnn"
# mlcd_retrain params whose defaults a deployment may set (MLCD_RETRAIN_DEFAULTS); a trigger's own params still win.
RETRAIN_DEFAULT_KEYS = ("epochs", "batch_size", "gate")
# Secrets come from the environment (a Kubernetes Secret, an untracked .env), never from a config file.
ENV_ONLY_SETTINGS = frozenset({"MLCD_ADMIN_TOKEN", "MLCD_METRICS_TOKEN"})


def _project_root() -> Path:
    """The checkout holding ``include/mlcd`` when installed editable, else the working directory."""
    here = Path(__file__).resolve()
    candidate = here.parents[2]
    if (candidate / "pyproject.toml").exists() and (candidate / "dags").is_dir():
        return candidate
    return Path.cwd()


@dataclass(frozen=True)
class Settings:
    """Where state lives and which backends are used. Built by :func:`get_settings`."""

    home: Path
    landing_uri: str
    model_name: str
    tracking_uri: str
    training_backend: str  # "local" or "kubernetes"
    router_backend: str  # "local" or "kubernetes"
    gateway_url: str
    admin_token: str | None
    data_path: str | None
    canary_spec: str | None = None  # JSON overrides of the rollout spec for every canary (MLCD_CANARY_SPEC)
    guard_bake_s: float = 300.0  # how long mlcd_guard still watches a freshly promoted champion
    # Intake limits: what a landed file may be or declare before it is refused (see mlcd.data.batch).
    max_batch_bytes: int = 512 * 1024 * 1024  # the file itself (MLCD_MAX_BATCH_BYTES)
    max_uncompressed_bytes: int = 512 * 1024 * 1024  # its arrays once decoded: bounds decoding memory
    max_batch_images: int = 500_000  # images per batch
    max_compression_ratio: float = 100.0  # uncompressed / compressed size of a member: zip bombs
    settle_s: float = 5.0  # a landed file is taken once unchanged (size, mtime) for this long
    # SQL database of the registry lease (MLCD_LEDGER_URL); None = the ledger's SQLite file.
    ledger_url: str | None = None
    # Where the canary task and the guard read the gateways' counters (mlcd.rollout.providers): "gateway" (its
    # own /metrics, MLCD_GATEWAY_URL) or "prometheus" (MLCD_PROMETHEUS_URL; a cluster with a Deployment per variant).
    metrics_provider: str = "gateway"
    prometheus_url: str | None = None
    prometheus_selector: str = ""  # extra label matchers, e.g. namespace="mlcd" (MLCD_PROMETHEUS_SELECTOR)
    prometheus_lookback: str = "1h"  # a vanished pod's final counts stay in the sums this long
    # mlcd_retrain param defaults (MLCD_RETRAIN_DEFAULTS, a JSON object): `make demo` on a small dataset sets them.
    retrain_defaults: dict[str, Any] = field(default_factory=dict)
    # mlcd_guard's default judge overrides (MLCD_GUARD_THRESHOLDS, a JSON object of GuardThresholds fields):
    # `make demo` on a small dataset widens the class-mix floor, since its weak models differ by ~0.1 among themselves.
    guard_thresholds: dict[str, Any] = field(default_factory=dict)
    project_root: Path = field(default_factory=_project_root)
    # Where batches, quarantine copies, snapshots and Data Docs live (MLCD_STORAGE_URL, see mlcd.storage): a
    # file:// folder by default (MLCD_HOME), an object store (s3://bucket/prefix) on a cluster; its fsspec
    # options (MLCD_STORAGE_OPTIONS, a JSON object: endpoint_url, ...). Empty url: file:// + home.
    storage_url: str = ""
    storage_options: dict[str, Any] = field(default_factory=dict)
    # Bearer token the gateway's /metrics asks for when it is set there (MLCD_METRICS_TOKEN; #23): the metrics
    # readers send it, else the admin token, which the gateway accepts too.
    metrics_token: str | None = None

    @property
    def storage_root(self) -> Path:
        """The local folder of a file:// storage URL; MLCD_HOME when storage is remote (local scratch only)."""
        url = self.storage_url or f"file://{self.home}"
        if url.startswith("file://"):
            return Path(url[len("file://") :])
        return self.home if "://" in url else Path(url)

    @property
    def storage_is_local(self) -> bool:
        return not self.storage_url or "://" not in self.storage_url or self.storage_url.startswith("file://")

    @property
    def ledger_path(self) -> Path:
        return self.home / "ledger.sqlite"

    @property
    def quarantine_dir(self) -> Path:
        return self.storage_root / "quarantine"

    @property
    def accepted_dir(self) -> Path:
        """Content-addressed copies of accepted batches: snapshots are built from these."""
        return self.storage_root / "batches"

    @property
    def snapshots_dir(self) -> Path:
        return self.storage_root / "snapshots"

    @property
    def data_docs_dir(self) -> Path:
        """Where GX renders the site: the storage folder itself, or a local render folder uploaded to storage."""
        return self.storage_root / "data_docs"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def expectations_dir(self) -> Path:
        env = os.environ.get("MLCD_EXPECTATIONS")
        if env:
            return Path(env)
        # The reviewed suites ship inside the package (include/mlcd/expectations/, package data of the wheel).
        return Path(__file__).parent / "expectations"


def json_object_setting(name: str, raw: str | None, what: str = "JSON object") -> dict[str, Any]:
    """A ``MLCD_*`` setting holding a JSON object; empty is ``{}``, anything else is refused in one line."""
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{name} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a {what}")
    return value


def parse_guard_thresholds(raw: str | None) -> dict[str, Any]:
    """``MLCD_GUARD_THRESHOLDS`` as a dict, checked as the guard will read it (a typo is refused, never ignored)."""
    value = json_object_setting("MLCD_GUARD_THRESHOLDS", raw)
    if value:
        from mlcd.rollout.analysis import GuardThresholds

        try:
            GuardThresholds.from_dict(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"MLCD_GUARD_THRESHOLDS: {exc}") from None
    return value


def parse_retrain_defaults(raw: str | None) -> dict[str, Any]:
    """``MLCD_RETRAIN_DEFAULTS`` as a dict; a typo or a non-object is refused in one line, never ignored."""
    value = json_object_setting("MLCD_RETRAIN_DEFAULTS", raw)
    unknown = sorted(set(value) - set(RETRAIN_DEFAULT_KEYS))
    if unknown:
        raise ValueError(f"MLCD_RETRAIN_DEFAULTS: unknown keys {unknown}; known: {', '.join(RETRAIN_DEFAULT_KEYS)}")
    return value


def _env(name: str, default: str | None = None) -> str | None:
    """``MLCD_X`` from the environment, else ``x`` of ``[mlcd]`` in Airflow's config, else MLCD_HOME's saved state
    (:mod:`mlcd.homestate`), else ``default``."""
    value = os.environ.get(name)
    if value in (None, "") and name.startswith("MLCD_") and name not in ENV_ONLY_SETTINGS:
        value = airflow_config_option(name[len("MLCD_") :].lower())
    if value in (None, ""):
        from mlcd.homestate import fallback  # the settings saved with MLCD_HOME's state (mlcd.homestate)

        value = fallback(name)
    return value if value not in (None, "") else default


def airflow_config_option(key: str, section: str = "mlcd") -> str | None:
    """``key`` of ``[mlcd]`` in Airflow's config: ``AIRFLOW__MLCD__<KEY>``, then the airflow.cfg file; else None.

    The provider declares the section (``mlcd.airflow.provider``), so a deployment may keep its settings in
    airflow.cfg next to Airflow's own; the ``MLCD_*`` environment still wins. The file is read as INI, without
    importing Airflow (the core never does): Airflow's ``AIRFLOW_CONFIG``, else ``$AIRFLOW_HOME/airflow.cfg``.
    An empty value (Airflow writes the section's options with empty defaults) counts as unset.
    """
    value = os.environ.get(f"AIRFLOW__{section.upper()}__{key.upper()}")
    if value:
        return value
    home = os.environ.get("AIRFLOW_HOME") or str(Path("~/airflow").expanduser())
    path = Path(os.environ.get("AIRFLOW_CONFIG") or Path(home) / "airflow.cfg")
    try:
        stat = path.stat()
    except OSError:
        return None
    return _read_cfg_section(str(path), stat.st_mtime_ns, section).get(key) or None


@functools.lru_cache(maxsize=8)
def _read_cfg_section(path: str, mtime_ns: int, section: str) -> dict[str, str]:
    # Keyed by mtime: load_settings() reads a dozen options per call, and an edited file is read again.
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split())  # configparser's messages span lines; a refusal is one
        raise ValueError(f"{path}: not a readable airflow.cfg: {reason}") from None
    return dict(parser[section]) if parser.has_section(section) else {}


def load_settings() -> Settings:
    """Read the environment now (tests call this after changing ``MLCD_*``)."""
    root = _project_root()
    home = Path(_env("MLCD_HOME", str(root / ".mlcd"))).expanduser().resolve()  # type: ignore[arg-type]
    storage_url = _storage_url(_env("MLCD_STORAGE_URL"), home)
    if storage_url.startswith("file://"):
        default_landing = str(Path(storage_url[len("file://") :]) / "landing")  # a plain path, as always
    else:
        default_landing = storage_url + "/landing"
    return Settings(
        home=home,
        landing_uri=_env("MLCD_LANDING_URI", default_landing),  # type: ignore[arg-type]
        model_name=_env("MLCD_MODEL_NAME", DEFAULT_MODEL_NAME),  # type: ignore[arg-type]
        tracking_uri=_env("MLFLOW_TRACKING_URI", _env("MLCD_MLFLOW_URI", "http://127.0.0.1:5000")),  # type: ignore[arg-type]
        training_backend=_env("MLCD_TRAINING_BACKEND", "local"),  # type: ignore[arg-type]
        router_backend=_env("MLCD_ROUTER_BACKEND", "local"),  # type: ignore[arg-type]
        gateway_url=_env("MLCD_GATEWAY_URL", "http://127.0.0.1:8000"),  # type: ignore[arg-type]
        admin_token=_env("MLCD_ADMIN_TOKEN"),
        metrics_token=_env("MLCD_METRICS_TOKEN"),
        data_path=_env("MLCD_DATA"),
        canary_spec=_env("MLCD_CANARY_SPEC"),
        guard_bake_s=float(_env("MLCD_GUARD_BAKE_S", "300")),  # type: ignore[arg-type]
        max_batch_bytes=int(_env("MLCD_MAX_BATCH_BYTES", str(512 * 1024 * 1024))),  # type: ignore[arg-type]
        max_uncompressed_bytes=int(_env("MLCD_MAX_UNCOMPRESSED_BYTES", str(512 * 1024 * 1024))),  # type: ignore[arg-type]
        max_batch_images=int(_env("MLCD_MAX_BATCH_IMAGES", "500000")),  # type: ignore[arg-type]
        max_compression_ratio=float(_env("MLCD_MAX_COMPRESSION_RATIO", "100")),  # type: ignore[arg-type]
        settle_s=float(_env("MLCD_SETTLE_S", "5")),  # type: ignore[arg-type]
        ledger_url=_env("MLCD_LEDGER_URL"),
        metrics_provider=(_env("MLCD_METRICS_PROVIDER", "gateway") or "gateway").strip().lower(),
        prometheus_url=_env("MLCD_PROMETHEUS_URL"),
        prometheus_selector=_env("MLCD_PROMETHEUS_SELECTOR", "") or "",
        prometheus_lookback=_env("MLCD_PROMETHEUS_LOOKBACK", "1h") or "1h",
        retrain_defaults=parse_retrain_defaults(_env("MLCD_RETRAIN_DEFAULTS")),
        guard_thresholds=parse_guard_thresholds(_env("MLCD_GUARD_THRESHOLDS")),
        project_root=root,
        storage_url=storage_url,
        storage_options=parse_storage_options(_env("MLCD_STORAGE_OPTIONS")),
    )


def _storage_url(raw: str | None, home: Path) -> str:
    """``MLCD_STORAGE_URL`` as a URL without a trailing slash; a plain path or none is a ``file://`` folder."""
    if not raw:
        return f"file://{home}"
    if "://" not in raw:
        return f"file://{Path(raw).expanduser().resolve()}"
    if raw.startswith("file://"):
        return f"file://{Path(raw[len('file://') :]).expanduser().resolve()}"
    return raw.rstrip("/")


def parse_storage_options(raw: str | None) -> dict[str, Any]:
    """``MLCD_STORAGE_OPTIONS`` (fsspec storage options as a JSON object); anything else is refused in one line."""
    return json_object_setting("MLCD_STORAGE_OPTIONS", raw, "JSON object of fsspec storage options")


def get_settings() -> Settings:
    """The settings as the environment says now; cheap enough to call per use, so tests can set ``MLCD_*``."""
    return load_settings()
