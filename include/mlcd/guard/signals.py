"""Input drift in production: the gateway's drift reference, and the drift signal that starts a retrain.

The gateway scores every ``/predict`` image into a :class:`~mlcd.guard.drift.DriftMonitor` and exports the
report as gauges on ``/metrics`` (``mlcd_gateway_drift_psi{feature}``, ``mlcd_gateway_drift_anomaly_share``,
``mlcd_gateway_drift_drifted``, ``mlcd_gateway_drift_images``). The reference is fitted once from the training
snapshot of the served model when its version records one (``mlcd.snapshot_id``), else from the reference data
set, and cached as ``.npz`` under ``MLCD_HOME/drift/`` so a restarted gateway does not refit. The snapshot is read
from the storage URL (``MLCD_STORAGE_URL``), so a gateway on a cluster finds it without a shared disk.

``mlcd_drift_watch`` reads the gauges (:func:`read_drift`) and, when the live window drifted, emits the
``mlcd_drift`` Asset that schedules ``mlcd_retrain``: the loop closes. A cooldown keeps one drifted window from
starting a retrain every few minutes (:func:`drift_signal`, a compare-and-set row in the ledger's
database); it holds only while the retrain it started is on its way or its version serves: a rejected or
rolled-back version (or none at all) releases it, so anonymous traffic that faked drift cannot mute genuine
drift afterwards. Airflow-free.
"""

from __future__ import annotations

import logging
import math
import re
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
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


def read_drift(gateway_url: str, timeout: float = 5.0, token: str | None = None) -> DriftStatus | None:
    """Read the drift gauges from ``/metrics`` (``token``: its bearer token, when the gateway asks for one);
    ``None`` when the gateway exports none (drift disabled)."""
    from prometheus_client.parser import text_string_to_metric_families

    req = urllib.request.Request(f"{gateway_url.rstrip('/')}/metrics")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
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


# --- the drift signal's cooldown, released when the retrain it started produced no champion -----------------

DRIFT_COOLDOWN_STATUS_KEY = "drift/cooldown_status"
# A drift-started retrain that registers no version at all within this long (it failed before its gate, or found
# the snapshot unchanged) no longer holds the cooldown.
RETRAIN_GRACE_S = 3 * 3600.0


class CooldownHold(StrEnum):
    """Where the drift signal's cooldown stands (what the page shows, with its reason)."""

    CLEAR = "clear"  # no signal within the cooldown: drift is signalled
    RETRAINING = "retraining"  # the signalled retrain is still on its way: later drift waits for it
    SERVING = "serving"  # the signalled retrain's version serves (champion or canary): the cooldown holds
    RELEASED = "released"  # the signalled retrain produced no champion: later genuine drift is signalled again


# Rollout states (mlcd.registry.state.RolloutState values) of a version the signalled retrain produced.
_IN_FLIGHT = frozenset({"registered", "canary"})
_SERVED = frozenset({"champion", "previous", "archived"})
_UNPRODUCTIVE = frozenset({"rejected", "rolled_back"})


def cooldown_hold(signal: Mapping[str, Any] | None, now: float, cooldown_s: float,
                  later: Sequence[tuple[int, str]], grace_s: float = RETRAIN_GRACE_S) -> tuple[CooldownHold, str]:
    """Whether the last drift signal still holds the cooldown, and why (pure: the caller reads the registry).

    Args:
        signal: the recorded signal (``at``; ``latest_version``: the newest registered version at the time).
        now: the time now (epoch seconds).
        cooldown_s: how long a signal holds at most.
        later: ``(version, rollout state)`` of the versions registered after the signal.
        grace_s: how long a signal holds while its retrain has registered nothing.
    """
    if not signal:
        return CooldownHold.CLEAR, "no drift signal recorded"
    age = now - float(signal.get("at", 0.0))
    if age >= cooldown_s:
        return CooldownHold.CLEAR, f"the last signal is {age:.0f}s old, beyond the {cooldown_s:.0f}s cooldown"
    ordered = sorted(later)
    for version, state in reversed(ordered):
        if state in _SERVED or state in _IN_FLIGHT:
            hold = CooldownHold.SERVING if state in _SERVED or state == "canary" else CooldownHold.RETRAINING
            return hold, (f"version {version} of the retrain signalled {age:.0f}s ago is {state}: drift waits out "
                          f"the {cooldown_s:.0f}s cooldown")
    if ordered:
        version, state = ordered[-1]
        return CooldownHold.RELEASED, (f"version {version} of the retrain signalled {age:.0f}s ago was {state}: "
                                       "no champion came of it, so the cooldown no longer mutes drift")
    if age >= grace_s:
        return CooldownHold.RELEASED, (f"the retrain signalled {age:.0f}s ago registered no version within "
                                       f"{grace_s:.0f}s: the cooldown no longer mutes drift")
    return CooldownHold.RETRAINING, f"a retrain was signalled {age:.0f}s ago and has registered no version yet"


def registry_versions(model_name: str, tracking_uri: str) -> list[tuple[int, str]]:
    """``(version, rollout state)`` of every version of ``model_name`` (``mlcd.state`` tag, else registered)."""
    from mlflow import MlflowClient

    from mlcd.registry.tags import TAG_STATE

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    out = []
    for mv in client.search_model_versions(f"name='{model_name}'"):
        out.append((int(mv.version), str((mv.tags or {}).get(TAG_STATE, "registered"))))
    return out


def drift_signal(cooldown_s: float, drift: Mapping[str, Any], versions: Sequence[tuple[int, str]] | None, *,
                 now: float | None = None, url: str | None = None,
                 grace_s: float = RETRAIN_GRACE_S) -> tuple[bool, CooldownHold, str]:
    """Claim the drift signal unless the last one still holds; record the decision for the page.

    ``versions`` is the registry now (:func:`registry_versions`; ``None`` when it could not be read: then only
    the plain cooldown applies and nothing is released). A signal records the newest version at the
    time, so the next call can tell what its retrain produced: a version that was rejected or rolled back (or
    none within ``grace_s``) releases the cooldown. The claim is one compare-and-set on the state row: of several
    drift watches at once, exactly one signals.

    Returns:
        ``(signalled, hold, reason)``.
    """
    from mlcd.statestore import DRIFT_SIGNAL_KEY, StateStore

    now = time.time() if now is None else float(now)
    store = StateStore(url)
    entry = store.read(DRIFT_SIGNAL_KEY)
    after = int((entry.value or {}).get("latest_version", 0))
    if versions is None:
        hold, reason = cooldown_hold(entry.value, now, cooldown_s, [], grace_s=math.inf)
        if hold is CooldownHold.RETRAINING:
            reason += " (registry unreadable: the cooldown is not released)"
    else:
        hold, reason = cooldown_hold(entry.value, now, cooldown_s, [v for v in versions if v[0] > after], grace_s)
    signalled = False
    if hold in (CooldownHold.CLEAR, CooldownHold.RELEASED):
        latest = after if versions is None else max((v for v, _ in versions), default=after)
        signalled = store.compare_and_set(DRIFT_SIGNAL_KEY, entry.version,
                                          {"at": now, "latest_version": latest, "why": reason, "drift": dict(drift)})
        if not signalled:
            hold, reason = CooldownHold.RETRAINING, "another drift watch signalled at the same moment"
    store.put(DRIFT_COOLDOWN_STATUS_KEY, {"state": hold.value, "reason": reason, "checked_at": now,
                                          "signalled": signalled, "drift": dict(drift)})
    return signalled, hold, reason


def drift_cooldown_status(url: str | None = None) -> dict[str, Any] | None:
    """The last drift-watch decision (``state``, ``reason``, ``checked_at``, ``signalled``) for the page."""
    from mlcd.statestore import StateStore

    return StateStore(url).get(DRIFT_COOLDOWN_STATUS_KEY)
