"""Shared fixtures: real servers on 127.0.0.1, isolated state per test, real MNIST when present.

Environment for Airflow is set here, at import time, before any test imports Airflow: every test session
gets its own AIRFLOW_HOME (SQLite) so tests never touch a developer's `.mlcd/`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist.npz"

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="mlcd-tests-"))
os.environ["AIRFLOW_HOME"] = str(_SESSION_DIR / "airflow")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO / "plugins")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
os.environ.setdefault("AIRFLOW_CONN_FS_DEFAULT", '{"conn_type": "fs", "extra": {"path": "/"}}')
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["MLCD_HOME"] = str(_SESSION_DIR / "mlcd-home")
# Tests write a batch and collect it at once; the settle rule has its own tests (tests/unit/test_intake_hostile.py).
os.environ.setdefault("MLCD_SETTLE_S", "0")
if "MLCD_DATA" not in os.environ and SHARED_MNIST.exists():
    os.environ["MLCD_DATA"] = str(SHARED_MNIST)
if "MLCD_DATA" not in os.environ:
    from mlcd.data.reference import reference_path

    if reference_path() is None:  # a fresh clone without MNIST: the digits, at the scale the tests slice
        from tests.digits import write_digits_at_test_scale

        os.environ["MLCD_DATA"] = str(write_digits_at_test_scale(_SESSION_DIR / "digits-shifted.npz"))
        print(f"no MNIST file: tests use scikit-learn's digits shifted to {os.environ['MLCD_DATA']}")


@pytest.fixture
def mlcd_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh MLCD_HOME (landing zone, ledger, snapshots, quarantine) for one test."""
    home = tmp_path / "mlcd-home"
    home.mkdir()
    monkeypatch.setenv("MLCD_HOME", str(home))
    monkeypatch.delenv("MLCD_LANDING_URI", raising=False)
    monkeypatch.delenv("MLCD_STORAGE_URL", raising=False)  # storage defaults to this home, whatever the shell says
    monkeypatch.delenv("MLCD_STORAGE_OPTIONS", raising=False)
    return home


@pytest.fixture(scope="session")
def reference_data():  # type: ignore[no-untyped-def]
    """The reference dataset (real MNIST in CI and on developer machines)."""
    from mlcd.data.reference import load_reference

    return load_reference()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One real ``mlflow server`` process on a free 127.0.0.1 port for the whole session."""
    from mlcd.mlflow_server import LocalMlflowServer

    server = LocalMlflowServer(root=tmp_path_factory.mktemp("mlflow")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def tracking_uri(mlflow_server, monkeypatch: pytest.MonkeyPatch) -> str:  # type: ignore[no-untyped-def]
    """The session MLflow server's URL, also exported as MLFLOW_TRACKING_URI for code under test."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    return str(mlflow_server.url)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """Migrate the session's SQLite Airflow metadata DB once (about 4 s)."""
    from airflow.utils import db

    db.resetdb()
    return Path(os.environ["AIRFLOW_HOME"])
