"""The operator's page in a real headless Chromium, against the real api-server of `make up`, after a rollout.

The platform runs on free loopback ports with its own MLCD_HOME. A demo-like rollout goes through its MLflow and
gateway: a champion, a canary walked through analysis windows under live traffic by the real canary logic, then
rolled back by the one rollback the guard uses. Chromium (Debian's, driven over the DevTools protocol by
docs/screenshot.py) opens /mlcd/ with an Airflow token: the page renders, the rollout chart carries one point per
recorded window and the rollback mark, and no script is loaded from anywhere. The screenshots land in docs/ when
``MLCD_UPDATE_SCREENSHOTS=1`` (else in a temporary folder).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlcd.mlflow_server import free_port

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed "
                                 "(apt-get install -y --no-install-recommends chromium; .ci/run does it)")]

REPO = Path(__file__).resolve().parents[2]
TOKEN = "page-test-token-0123456789"


def _screenshot_module() -> Any:
    spec = importlib.util.spec_from_file_location("mlcd_docs_screenshot", REPO / "docs" / "screenshot.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from mlcd.platform import Ports, down, up
    from mlcd.settings import get_settings

    home = tmp_path_factory.mktemp("page-home")
    patched = pytest.MonkeyPatch()  # module scope: the function-scoped monkeypatch fixture is not available
    for key, value in {"MLCD_HOME": str(home), "AIRFLOW_HOME": str(home / "airflow"), "MLCD_ADMIN_TOKEN": TOKEN}.items():
        patched.setenv(key, value)
    settings = get_settings()
    ports = Ports(airflow=free_port(), mlflow=free_port(), gateway=free_port())
    try:
        urls = up(settings, ports)
        patched.setenv("MLCD_GATEWAY_URL", urls["gateway"])
        patched.setenv("MLFLOW_TRACKING_URI", urls["mlflow"])
        yield {"settings": settings, "urls": urls, "home": home}
    finally:
        down(settings)
        patched.undo()


def _demo_rollout(urls: dict[str, str], model: str, reference: Any) -> tuple[str, str, int]:
    """Champion healthy_a; canary 'broken' through up to two analysis windows under traffic, rolled back by its own
    analysis (the class-distribution check) or, if it is still running after two windows, by the guard.

    Returns the stable and canary versions and how many analysis windows were judged (each is one chart point).
    """
    from mlcd.registry import ModelRegistry
    from mlcd.rollout.actions import rollback
    from mlcd.rollout.canary import CanaryRollout, RolloutAborted
    from mlcd.rollout.router import LocalGatewayRouter
    from mlcd.rollout.spec import RolloutSpec
    from mlcd.serving.traffic import run_traffic
    from tests.modelkit import logged_models, register

    uris = logged_models(urls["mlflow"], reference.x_train[:2000], reference.y_train[:2000])
    stable = register(urls["mlflow"], model, uris["healthy_a"])
    registry = ModelRegistry(urls["mlflow"], model)
    registry.bootstrap_champion(stable, "tests", "first model")
    router = LocalGatewayRouter(urls["gateway"], TOKEN)
    router.set_routes(stable, None, 0)
    canary = register(urls["mlflow"], model, uris["broken"])
    spec = RolloutSpec(steps=(25, 50, 100), analysis_window_s=2.0, min_requests=5, min_stable_requests=5,
                       max_p99_latency_ratio=20.0, p99_latency_slack_s=0.25)
    rollout = CanaryRollout(registry, router, spec, urls["gateway"], actor="tests", dag_run_id="manual__page")
    traffic = threading.Thread(target=run_traffic, args=(urls["gateway"], 40, 12),
                               kwargs={"images": reference.x_test[:300]})
    traffic.start()
    windows = 0
    try:
        time.sleep(0.5)
        p = rollout.start(canary, "tests")
        try:
            for _ in range(2):
                p = rollout.begin_step(p)
                time.sleep(spec.analysis_window_s)
                windows += 1  # judged and recorded, whatever the verdict
                p = rollout.finish_step(p).progress
        except RolloutAborted:
            pass  # the canary's own analysis rolled it back (recorded with its evidence)
        else:
            rollback(registry, router, canary, "guard: canary version predicted-class distribution shifted",
                     {"verdict": {"class_distribution": "p < 1e-9"}}, "airflow:mlcd_guard", "manual__guard")
    finally:
        traffic.join()
    assert registry.get_state(canary).state.value == "rolled_back"
    return stable, canary, windows


def test_page_shows_the_rollout_chart_in_chromium(platform: dict[str, Any], reference_data: Any,
                                                  tmp_path: Path) -> None:
    shots = _screenshot_module()
    stable, canary, windows = _demo_rollout(platform["urls"], platform["settings"].model_name, reference_data)
    out = REPO / "docs" if os.environ.get("MLCD_UPDATE_SCREENSHOTS") == "1" else tmp_path
    token = shots.airflow_token(platform["urls"]["airflow"], platform["home"])
    facts = shots.take(platform["urls"]["airflow"], token, out)
    assert facts["status"] == 200 and facts["title"] == "mlcd"
    assert facts["first"] == f"v{canary}"  # the newest version first
    assert windows >= 1 and facts["charts"] >= 1 and facts["verdicts"] == windows  # one dot per window recorded
    # Per window: canary and stable error rate and p99 latency, next to the verdict dot.
    assert facts["points"] == facts["verdicts"] * 5
    assert facts["rollbacks"] == 1 and facts["scripts"] == 0
    for name in ("mlcd-page.png", "mlcd-rollout.png"):
        png = (out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, name
