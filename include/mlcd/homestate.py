"""What belongs to one ``MLCD_HOME`` besides its data: the settings it was made with and the platform's address.

A state folder is only useful with the settings it was made with: the demo's small-dataset gate, its short canary
windows and bake, its widened class-mix floor. So they are saved beside the state (``settings.json``) and every
process that points ``MLCD_HOME`` at that folder reads them under its own environment, the way a kubeconfig or
``~/.mlflow`` belongs to the state it describes rather than to one shell:

    explicit environment  >  $MLCD_HOME/settings.json  >  $MLCD_HOME/run/ (written by ``make up``)  >  defaults

``make up`` writes ``run/platform.json`` (where Airflow, MLflow and the gateway listen now) and the admin token
(``run/gateway_admin_token``, mode 600), so an on-call shell with only ``MLCD_HOME`` reaches the platform it
started, with its credentials, as ``kubectl`` finds a cluster from its kubeconfig. Nothing here touches the network.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SETTINGS_FILE = "settings.json"
PLATFORM_FILE = "platform.json"  # under run/
ADMIN_TOKEN_FILE = "gateway_admin_token"  # under run/; created by mlcd.platform (mode 600)
FEEDBACK_TOKEN_FILE = "gateway_feedback_token"

# Settings that describe how a state folder is run (saved by the demo, re-applied by `make up`). Secrets are never
# saved here: they stay in run/ (mode 600) or come from the environment.
SAVED_KEYS = (
    "MLCD_CANARY_SPEC",
    "MLCD_GUARD_BAKE_S",
    "MLCD_RETRAIN_DEFAULTS",
    "MLCD_GUARD_THRESHOLDS",
    "MLCD_DATA",
    "MLCD_MODEL_NAME",
    "MLCD_PAGE_URL",
)
# Where the running platform listens, as `make up` recorded it: environment name -> platform.json key.
ADDRESS_KEYS = {"MLFLOW_TRACKING_URI": "mlflow", "MLCD_GATEWAY_URL": "gateway"}
RECORDED_URLS = ("airflow", "mlflow", "gateway")
_CACHE: dict[Path, tuple[int, dict[str, str]]] = {}  # path -> (mtime_ns, content): settings are read per use


def home_dir() -> Path:
    """``MLCD_HOME`` as :func:`mlcd.settings.load_settings` resolves it (the checkout's ``.mlcd`` by default)."""
    from mlcd.settings import _project_root

    raw = os.environ.get("MLCD_HOME") or str(_project_root() / ".mlcd")
    return Path(raw).expanduser().resolve()


def _read_json(path: Path) -> dict[str, str]:
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return {}
    cached = _CACHE.get(path)
    if cached and cached[0] == mtime:
        return cached[1]
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    content = {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}
    _CACHE[path] = (mtime, content)
    return content


def saved_settings(home: Path | None = None) -> dict[str, str]:
    """The settings saved with this state (``$MLCD_HOME/settings.json``); ``{}`` when none were saved."""
    values = _read_json((home or home_dir()) / SETTINGS_FILE)
    return {k: v for k, v in values.items() if k in SAVED_KEYS}


def save_settings(home: Path, values: dict[str, str]) -> Path:
    """Save the given ``MLCD_*`` settings with the state in ``home`` (only :data:`SAVED_KEYS`; empty ones dropped)."""
    unknown = sorted(set(values) - set(SAVED_KEYS))
    if unknown:
        raise ValueError(f"not a setting saved with a state: {', '.join(unknown)}; saved: {', '.join(SAVED_KEYS)}")
    path = home / SETTINGS_FILE
    home.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({k: v for k, v in sorted(values.items()) if v}, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def platform_address(home: Path | None = None) -> dict[str, str]:
    """Where the platform started on this state listens (``run/platform.json``), by environment name."""
    recorded = _read_json((home or home_dir()) / "run" / PLATFORM_FILE)
    return {env: recorded[key] for env, key in ADDRESS_KEYS.items() if recorded.get(key)}


def record_platform(home: Path, urls: dict[str, str]) -> Path:
    """Write ``run/platform.json`` with the URLs ``make up`` serves (read by any later shell on this home)."""
    from mlcd.platform import write_private

    path = home / "run" / PLATFORM_FILE
    path.unlink(missing_ok=True)
    write_private(path, json.dumps({k: urls[k] for k in RECORDED_URLS if k in urls}) + "\n")
    return path


def forget_platform(home: Path) -> None:
    """The platform stopped: its address is no longer true."""
    (home / "run" / PLATFORM_FILE).unlink(missing_ok=True)


def run_secret(name: str, home: Path | None = None) -> str | None:
    """A secret ``make up`` keeps under ``run/`` (readable by its owner only), or ``None``."""
    try:
        value = ((home or home_dir()) / "run" / name).read_text().strip()
    except OSError:
        return None
    return value or None


def fallback(name: str) -> str | None:
    """The value of ``name`` this state provides when the environment does not: saved settings, then the running
    platform's address and admin token. Called by :func:`mlcd.settings.load_settings` for every variable it reads."""
    if name in SAVED_KEYS:
        return saved_settings().get(name)
    if name in ADDRESS_KEYS:
        return platform_address().get(name)
    if name == "MLCD_ADMIN_TOKEN":
        return run_secret(ADMIN_TOKEN_FILE)
    if name == "MLCD_FEEDBACK_TOKEN":
        return run_secret(FEEDBACK_TOKEN_FILE)
    return None


def apply_saved_settings(env: dict[str, str] | None = None, home: Path | None = None) -> dict[str, str]:
    """Put this state's saved settings into ``env`` (``os.environ`` by default) where it has none; returns the
    ones applied, so ``make up`` can say which it re-applied. An explicit environment variable always wins."""
    target = os.environ if env is None else env
    applied = {k: v for k, v in saved_settings(home).items() if not target.get(k)}
    target.update(applied)
    return applied
