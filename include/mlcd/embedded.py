"""The embedded default: Airflow, MLflow and the gateway on this machine, all state under ``MLCD_HOME``.

``airflow_env`` is the one place that decides how the local Airflow is configured (SQLite under MLCD_HOME, our
``dags/`` and ``plugins/``, loopback only, few workers), so ``make demo``, ``make up`` and the CLI agree.
"""

from __future__ import annotations

import os
from pathlib import Path

from mlcd.settings import Settings, get_settings


def airflow_env(settings: Settings | None = None) -> dict[str, str]:
    """Environment variables for every Airflow process of the embedded default."""
    settings = settings or get_settings()
    airflow_home = Path(os.environ.get("AIRFLOW_HOME") or settings.home / "airflow")
    return {
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(settings.project_root / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(settings.project_root / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(settings.logs_dir / "airflow"),
        "AIRFLOW_CONN_FS_DEFAULT": '{"conn_type": "fs", "extra": {"path": "/"}}',
        # Airflow 3 ships the Connection form's Test button disabled; the embedded default is one user's machine.
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        "MLCD_HOME": str(settings.home),
    }



# Pools the DAGs use: name → (slots, description). One training at a time here; a cluster sizes it to its GPUs.
POOLS: dict[str, tuple[int, str]] = {"training": (1, "mlcd_retrain's train task: trainings that may run at once")}


def ensure_pools(airflow_bin: str, env: dict[str, str], cwd: Path | None = None) -> list[str]:
    """Create the pools the DAGs need when missing (a pool an operator resized is left as it is).

    A task in a pool that does not exist is never scheduled, so this runs after ``airflow db migrate``.

    Returns:
        The pools created now.
    """
    import subprocess

    created = []
    for name, (slots, description) in POOLS.items():
        exists = subprocess.run([airflow_bin, "pools", "get", name], env=env, cwd=cwd, capture_output=True)
        if exists.returncode == 0:
            continue
        subprocess.run([airflow_bin, "pools", "set", name, str(slots), description], env=env, cwd=cwd, check=True,
                       capture_output=True)
        created.append(name)
    return created
