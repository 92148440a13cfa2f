"""Manual control: ``mlcd rollback`` / ``pause`` / ``resume`` / ``promote`` through the real CLI, registry and gateway,
and the canary task holding its weight while paused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mlcd.cli import cli
from mlcd.registry.state import RolloutState
from mlcd.rollout.canary import CanaryRollout
from mlcd.rollout.router import RouteStatus
from mlcd.rollout.spec import Action, Outcome, RolloutSpec
from tests.modelkit import TOKEN, logged_models, rollout

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def uris(mlflow_server: Any, reference_data: Any) -> dict[str, str]:
    return logged_models(mlflow_server.url, reference_data.x_train[:2000], reference_data.y_train[:2000])


def _env(ro: Any) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": ro.tracking_uri, "MLCD_MODEL_NAME": ro.model_name, "MLCD_GATEWAY_URL": ro.url,
            "MLCD_ADMIN_TOKEN": TOKEN}


def test_cli_rollback_is_recorded_with_who_asked_and_idempotent(mlflow_server: Any, uris: dict[str, str],
                                                                tmp_path: Path) -> None:
    import getpass

    runner = CliRunner()
    with rollout(mlflow_server.url, uris, "cli-rollback", "healthy_b", tmp_path, weight=20) as ro:
        env = _env(ro)
        missing = runner.invoke(cli, ["rollback", "--version", ro.canary], env=env)
        assert missing.exit_code == 2 and "--reason" in missing.output
        bad = runner.invoke(cli, ["rollback", "--version", "999", "--reason", "x"], env=env)
        assert bad.exit_code == 1 and bad.output.startswith("error: ") and bad.output.count("\n") == 1

        # No implicit version: a rollback names what it takes out of service.
        implicit = runner.invoke(cli, ["rollback", "--reason", "x"], env=env)
        assert implicit.exit_code == 2 and "--version" in implicit.output
        # --dry-run says what would happen and moves nothing.
        dry = runner.invoke(cli, ["rollback", "--version", ro.canary, "--reason", "x", "--dry-run"], env=env)
        assert dry.exit_code == 0, dry.output
        assert dry.output.startswith("dry run, nothing changed: would send 100% of traffic to version "
                                     f"{ro.stable}") and f"canary {ro.canary} 20%" in dry.output
        assert ro.router.get_routes() == RouteStatus(ro.stable, ro.canary, 20)
        assert ro.registry.get_state(ro.canary).state is RolloutState.CANARY

        first = runner.invoke(cli, ["rollback", "--version", ro.canary, "--reason", "users report wrong digits"],
                              env=env)
        assert first.exit_code == 0, first.output
        # The last line: without an mlcd_alerts Connection the rollback's alert is logged, and where that log line
        # goes depends on how logging was configured by earlier tests in the same process.
        assert first.output.strip().splitlines()[-1] == (f"version {ro.canary} rolled back; traffic on version {ro.stable} "
                                        f"(asked by cli:{getpass.getuser()})")
        assert ro.router.get_routes() == RouteStatus(ro.stable, None, 0)
        record = ro.registry.get_state(ro.canary)
        last = record.transitions()[-1]
        assert record.state is RolloutState.ROLLED_BACK
        assert (last["by"], last["why"]) == (f"cli:{getpass.getuser()}", "manual: users report wrong digits")
        assert record.tags["mlcd.rollback_checks"] == "manual"

        second = runner.invoke(cli, ["rollback", "--version", ro.canary, "--reason", "again"], env=env)
        assert second.exit_code == 0 and "already rolled back" in second.output
        assert len(ro.registry.get_state(ro.canary).history) == len(record.history)

        # The champion cannot be rolled back without a previous version: one line, exit 1, nothing moved.
        no_prev = runner.invoke(cli, ["rollback", "--version", ro.stable, "--reason", "x"], env=env)
        assert no_prev.exit_code == 1 and "no previous version" in no_prev.output
        assert ro.registry.get_state(ro.stable).state is RolloutState.CHAMPION


def test_pause_holds_the_canary_weight_until_resume(mlflow_server: Any, uris: dict[str, str],
                                                    tmp_path: Path) -> None:
    runner = CliRunner()
    with rollout(mlflow_server.url, uris, "cli-pause", "healthy_b", tmp_path, weight=0) as ro:
        env = _env(ro)
        spec = RolloutSpec(steps=(10, 50, 100), analysis_window_s=1, min_requests=1, min_stable_requests=1)
        canary = CanaryRollout(ro.registry, ro.router, spec, ro.url, actor="tests")
        from mlcd.rollout.canary import RolloutProgress

        p = canary.begin_step(RolloutProgress(ro.canary, ro.stable))
        assert p.weight == 10 and ro.router.get_routes().canary_weight == 10

        paused = runner.invoke(cli, ["pause", "--reason", "looking at a dashboard"], env=env)
        assert paused.exit_code == 0 and paused.output.strip().startswith(f"canary {ro.canary} paused (asked by cli:")
        step = canary.finish_step(p)
        assert step.action is Action.REPEAT and step.progress.outcomes == []  # not judged, not counted
        p = canary.begin_step(step.progress)
        assert p.weight == 10 and ro.router.get_routes().canary_weight == 10

        resumed = runner.invoke(cli, ["resume", "--reason", "dashboard fine"], env=env)
        assert resumed.exit_code == 0
        judged = canary.finish_step(p)  # judged again now: no traffic here, so inconclusive and repeated
        assert (judged.action, judged.verdict.outcome) == (Action.REPEAT, Outcome.INCONCLUSIVE)
        assert judged.progress.outcomes == ["inconclusive"] and judged.progress.repeat
        assert ro.router.get_routes().canary_weight == 10  # the weight is held, not advanced
        # The pause and the resume are in the record, with who asked.
        record = ro.registry.get_state(ro.canary)
        assert record.last_event("paused")["by"].startswith("cli:") and record.last_event("resumed")

        promoted = runner.invoke(cli, ["promote", "--version", ro.canary, "--reason", "ship it"], env=env)
        assert promoted.exit_code == 0 and promoted.output.startswith(f"version {ro.canary} is champion (asked by")
        assert ro.router.get_routes() == RouteStatus(ro.canary, None, 0)
        assert ro.registry.aliases() == {"champion": ro.canary, "previous": ro.stable}
        refused = runner.invoke(cli, ["pause", "--version", ro.canary, "--reason", "x"], env=env)
        assert refused.exit_code == 1 and "only a canary" in refused.output
