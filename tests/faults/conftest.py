"""Fixtures of the fault drills: an MLflow server the drills may kill (not the session's shared one), a fresh
MLCD_HOME (the registry lease lives in its ledger), a registry, and a gateway process on the persisted routes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.kit import ADMIN, GatewayProcess, model_name, register_versions


@pytest.fixture(scope="session")
def killable_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from mlcd.mlflow_server import LocalMlflowServer

    server = LocalMlflowServer(root=tmp_path_factory.mktemp("faults-mlflow")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mlflow_up(killable_mlflow: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The drills' MLflow, started again (same port, same store) if a previous drill left it dead."""
    if killable_mlflow.process is None or killable_mlflow.process.poll() is not None:
        killable_mlflow.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", killable_mlflow.url)
    return killable_mlflow


@pytest.fixture
def drill(mlflow_up: Any, mlcd_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """v1 champion, v2 canary in the registry; a gateway process serving them at 25 % from its saved routes."""
    from mlcd.registry import ModelRegistry
    from mlcd.rollout.router import LocalGatewayRouter
    from mlcd.serving.state import RouteState, save_state

    name = model_name("drill")
    monkeypatch.setenv("MLCD_MODEL_NAME", name)
    monkeypatch.setenv("MLCD_ADMIN_TOKEN", ADMIN)
    registry = ModelRegistry(mlflow_up.url, name)
    v1, v2 = register_versions(registry, 2)
    registry.bootstrap_champion(v1, "drill")
    registry.start_canary(v2, "drill", "canary under drill")
    state = tmp_path / "gateway" / "state.json"
    save_state(state, RouteState(v1, v2, 25, generation=0))
    gateway = GatewayProcess(state, mlflow_up.url, name).start()
    monkeypatch.setenv("MLCD_GATEWAY_URL", gateway.url)

    class Drill:
        pass

    d: Any = Drill()
    d.registry, d.router, d.gateway, d.mlflow = registry, LocalGatewayRouter(gateway.url, ADMIN, timeout=30), gateway, mlflow_up
    d.v1, d.v2, d.name, d.state = v1, v2, name, state
    try:
        yield d
    finally:
        gateway.stop()
