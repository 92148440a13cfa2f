"""Input drift in production: the gateway's drift reference, and the drift signal that starts a retrain.

The gateway scores every ``/predict`` image into a :class:`~mlcd.guard.drift.DriftMonitor` and exports the
report as gauges on ``/metrics`` (``mlcd_gateway_drift_psi{feature}``, ``mlcd_gateway_drift_anomaly_share``,
``mlcd_gateway_drift_drifted``, ``mlcd_gateway_drift_images``). The reference is fitted once from the training
snapshot of the served model when its version records one (``mlcd.snapshot_id``), else from the reference data
set, and cached as ``.npz`` under ``MLCD_HOME/drift/`` so a restarted gateway does not refit. The snapshot is read
from the storage URL (``MLCD_STORAGE_URL``), so a gateway on a cluster finds it without a shared disk.

``mlcd_drift_watch`` reads the gauges (:func:`read_drift`) and, when the live window drifted, emits the
``mlcd_drift`` Asset that schedules ``mlcd_retrain``: the loop closes. A cooldown keeps one drifted window from
starting a retrain every few minutes (:func:`should_signal`, a compare-and-set row in the ledger's
database). Airflow-free.
"""

from __future__ import annotations

import logging
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlcd.guard.drift import DriftReference

log = logging.getLogger(__name__)

_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def reference_cache_path(home: Path, snapshot_id: str | None) -> Path:
    """``MLCD_HOME/drift/reference-<snapshot id | "reference">.npz`` (an unsafe id falls back to the default)."""
    key = snapshot_id if snapshot_id and _SAFE_ID.match(snapshot_id) else "reference"
    return Path(home) / "drift" / f"reference-{key}.npz"


def _snapshots_url(home: Path, storage_url: str | None) -> str:
    """Where snapshots are: the given storage URL, else the configured one (for the configured home)."""
    if storage_url:
        return storage_url.rstrip("/") + "/snapshots"
    from mlcd.settings import get_settings

    settings = get_settings()
    if Path(home).resolve() == settings.home:
        return settings.storage_url.rstrip("/") + "/snapshots"
    return f"file://{Path(home).resolve()}/snapshots"


def _training_images(home: Path, snapshot_id: str | None, storage_url: str | None = None) -> tuple[Any, str]:
    """The served model's training images when its snapshot is published in storage, else the reference data set.

    The snapshot is read from the storage URL (an object store on a cluster), not from a disk the gateway's own
    volume never has; an unpublished or unreadable snapshot falls back with a warning that says why.
    """
    if snapshot_id and _SAFE_ID.match(snapshot_id):
        from mlcd.data.batch import BatchError
        from mlcd.data.snapshot import load_split, read_snapshot

        uri = f"{_snapshots_url(home, storage_url)}/{snapshot_id}"
        try:
            return load_split(read_snapshot(uri), "train")[0], f"snapshot {snapshot_id}"
        except (ValueError, BatchError, OSError) as exc:
            log.warning("snapshot %s not readable from %s (%s): drift reference from the reference data",
                        snapshot_id, uri, exc)
    from mlcd.data.reference import load_reference

    ref = load_reference()
    return ref.x_train, f"reference data {ref.source}"


def load_or_fit_reference(home: Path, snapshot_id: str | None = None, storage_url: str | None = None) -> DriftReference:
    """The cached reference for ``snapshot_id`` (or the reference data), fitting and caching it if missing.

    The fitted reference is a local cache under ``home/drift``; the snapshot it is fitted from is read from
    ``storage_url`` (default ``MLCD_STORAGE_URL``).
    """
    path = reference_cache_path(home, snapshot_id)
    if path.exists():
        try:
            return DriftReference.load(path)
        except (ValueError, OSError) as exc:  # a corrupt cache is refitted, not fatal
            log.warning("drift reference %s unreadable (%s): refitting", path, exc)
    images, source = _training_images(
        home, snapshot_id if path.name != "reference-reference.npz" else None, storage_url)
    reference = DriftReference.fit(images)
    reference.save(path)
    log.info("drift reference fitted from %s (%d images) and cached at %s", source, reference.n_reference, path)
    return reference


def snapshot_of(model_name: str, tracking_uri: str, version: str | None) -> str | None:
    """The ``mlcd.snapshot_id`` tag of a served version, or ``None`` (not recorded, or the registry is down)."""
    if version is None:
        return None
    try:
        from mlflow import MlflowClient

        mv = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).get_model_version(
            model_name, str(version))
        value = (mv.tags or {}).get("mlcd.snapshot_id")
        return None if value in (None, "", "None") else str(value)
    except Exception as exc:  # noqa: BLE001 - drift falls back to the reference data
        log.warning("no snapshot id for version %s (%s): using the reference data", version, exc)
        return None


@dataclass(frozen=True)
class DriftStatus:
    """The drift gauges of one gateway."""

    drifted: bool
    psi_mean_intensity: float | None
    psi_ink: float | None
    anomaly_share: float | None
    n_images: int

    def as_dict(self) -> dict[str, Any]:
        return {"drifted": self.drifted, "psi_mean_intensity": self.psi_mean_intensity, "psi_ink": self.psi_ink,
                "anomaly_share": self.anomaly_share, "n_images": self.n_images}


def read_drift(gateway_url: str, timeout: float = 5.0) -> DriftStatus | None:
    """Read the drift gauges from ``/metrics``; ``None`` when the gateway exports none (drift disabled)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{gateway_url.rstrip('/')}/metrics", timeout=timeout) as resp:  # noqa: S310
        text = resp.read().decode("utf-8")
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "mlcd_gateway_drift_psi":
                values[f"psi_{s.labels.get('feature')}"] = s.value
            elif s.name.startswith("mlcd_gateway_drift_"):
                values[s.name[len("mlcd_gateway_drift_"):]] = s.value
    if "drifted" not in values:
        return None

    def finite(key: str) -> float | None:
        v = values.get(key)
        return None if v is None or v != v else float(v)  # NaN (no images yet) → None

    return DriftStatus(bool(values["drifted"]), finite("psi_mean_intensity"), finite("psi_ink"),
                       finite("anomaly_share"), int(values.get("images", 0)))


def should_signal(cooldown_s: float, now: float | None = None, *, url: str | None = None) -> bool:
    """True when no drift signal was sent within ``cooldown_s``; records the signal when it returns True.

    The cooldown is one row of the shared state store (:mod:`mlcd.statestore`, in the database at
    ``MLCD_LEDGER_URL``), claimed by compare-and-set: of several drift-watch runs deciding at once, on any
    workers, exactly one signals.
    """
    from mlcd.statestore import DRIFT_SIGNAL_KEY, StateStore

    return StateStore(url).claim(DRIFT_SIGNAL_KEY, cooldown_s, now)
