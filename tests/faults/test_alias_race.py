"""Drill: the guard and the retrain DAG race on the aliases, as two separate processes (two Airflow tasks): the
canary task promotes its version after the last window while the guard rolls the same version back. Whatever
the interleaving, the registry lease lets one writer move at a time, the loser is refused or finds the move
done, and the promotion's route change is compare-and-set: it ends with the old champion serving and
champion, the canary ``rolled_back``, and no invariant broken."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.faults.kit import ADMIN, assert_healthy_ending, child_env

pytestmark = pytest.mark.faults

_RETRAIN = r"""
import json, sys, time
from mlcd.registry import ModelRegistry
from mlcd.rollout.canary import CanaryRollout, RolloutProgress
from mlcd.rollout.router import LocalGatewayRouter
from mlcd.rollout.spec import Outcome, RolloutSpec, StepVerdict

tracking, name, url, token, v1, v2, at = sys.argv[1:8]
rollout = CanaryRollout(ModelRegistry(tracking, name), LocalGatewayRouter(url, token, timeout=30), RolloutSpec(),
                        url, actor="airflow:mlcd_retrain")
p = RolloutProgress(v2, v1, weight=100, outcomes=["pass", "pass", "pass"])
time.sleep(max(0.0, float(at) - time.time()))
try:
    rollout._promote(p, StepVerdict(Outcome.PASS, ("canary passed its last window",)))  # the task's last step
    print(json.dumps({"who": "retrain", "ok": True}))
except Exception as exc:
    print(json.dumps({"who": "retrain", "ok": False, "error": f"{type(exc).__name__}: {exc}"}))
"""

_GUARD = r"""
import json, sys, time
from mlcd.registry import ModelRegistry
from mlcd.rollout.actions import rollback
from mlcd.rollout.router import LocalGatewayRouter

tracking, name, url, token, v1, v2, at = sys.argv[1:8]
registry, router = ModelRegistry(tracking, name), LocalGatewayRouter(url, token, timeout=30)
time.sleep(max(0.0, float(at) - time.time()))
errors = []
for attempt in range(3):  # the rollback task's retries
    try:
        done = rollback(registry, router, v2, "guard: class distribution", {"drill": True}, "airflow:mlcd_guard")
        print(json.dumps({"who": "guard", "ok": True, "restored": done.restored, "errors": errors}))
        break
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
        time.sleep(1)
else:
    print(json.dumps({"who": "guard", "ok": False, "errors": errors}))
"""


def test_guard_and_retrain_race_on_the_aliases(drill: Any) -> None:
    drill.router.set_routes(drill.v1, drill.v2, 100)  # the canary at its last step
    at = time.time() + 12  # both processes import MLflow first, then start together
    args = [drill.mlflow.url, drill.name, drill.gateway.url, ADMIN, drill.v1, drill.v2, str(at)]
    procs = [subprocess.Popen([sys.executable, "-c", code, *args], env=child_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for code in (_RETRAIN, _GUARD)]
    results = {}
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-2000:]
        line = json.loads(out.strip().splitlines()[-1])
        results[line["who"]] = line
    assert results["guard"]["ok"], results  # the guard's rollback always lands (on the first try or a retry)
    if not results["retrain"]["ok"]:  # the loser is refused, never half-applied
        assert any(w in results["retrain"]["error"] for w in ("RolloutStopped", "Illegal", "rolled_back", "lease")), \
            results
    assert drill.registry.aliases().get("champion") == drill.v1, (drill.registry.aliases(), results)
    assert drill.registry.get_state(drill.v2).state.value == "rolled_back"
    routes = drill.router.get_routes()
    assert (routes.stable, routes.canary) == (drill.v1, None), (routes, results)
    assert_healthy_ending(drill.router, drill.registry, healthy={drill.v1}, bad={drill.v2})
