"""``mlcd rollback``, ``mlcd promote``, ``mlcd pause`` and ``mlcd resume``: the on-call engineer's manual controls.

Each move is recorded in the version's rollout record with who asked (``cli:<login>``). A rollback routes all
traffic to stable first, then moves the aliases back. Errors are one line on stderr with exit code 1 (2 for usage).
"""

from __future__ import annotations

import getpass
import json
from typing import Any

import click

from mlcd.settings import get_settings


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name (some containers)
        return "cli:unknown"


def _fail(err: BaseException) -> None:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    click.echo(f"error: {text}", err=True)
    raise SystemExit(1)


def _run(action: str, version: str | None, reason: str, tracking_uri: str | None, model_name: str | None,
         gateway_url: str | None) -> dict[str, Any]:
    from mlflow.exceptions import MlflowException

    from mlcd.guard.watch import default_version, promote, rollback, set_paused
    from mlcd.registry import ModelRegistry, RegistryError
    from mlcd.rollout.router import RouterError, router_from_settings

    if not reason.strip():
        _fail(ValueError("--reason must not be empty"))
    s = get_settings()
    actor = _actor()
    try:
        registry = ModelRegistry(tracking_uri or s.tracking_uri, model_name or s.model_name)
        target = version or default_version(registry, action)
        if action == "pause" or action == "resume":
            return set_paused(registry, target, action == "pause", reason, actor)
        router = router_from_settings(gateway_url or s.gateway_url)
        if action == "rollback":
            return {"actor": actor, **rollback(registry, router, target, f"manual: {reason}",
                                               {"manual": True, "asked_by": actor}, actor).as_dict()}
        return {"actor": actor, **promote(registry, router, target, f"manual: {reason}", actor)}
    except (RegistryError, RouterError, MlflowException, ValueError) as err:
        _fail(err)
    raise AssertionError("unreachable")  # pragma: no cover


_common = [
    click.option("--reason", required=True, help="Why (recorded in the rollout record)."),
    click.option("--tracking-uri", default=None, help="MLflow server (default: MLFLOW_TRACKING_URI / settings)."),
    click.option("--model-name", default=None, help="Registered model (default: MLCD_MODEL_NAME)."),
    click.option("--gateway-url", default=None, help="Gateway admin API (default: MLCD_GATEWAY_URL)."),
    click.option("--json", "as_json", is_flag=True, help="Print JSON."),
]


def _with_common(fn: Any) -> Any:
    for option in reversed(_common):
        fn = option(fn)
    return fn


def _echo(out: dict[str, Any], as_json: bool, line: str) -> None:
    click.echo(json.dumps(out, indent=2) if as_json else line)


@click.command("rollback")
@click.option("--version", default=None, help="Version to roll back [default: the canary, else the champion].")
@_with_common
def rollback_command(version: str | None, reason: str, tracking_uri: str | None, model_name: str | None,
                     gateway_url: str | None, as_json: bool) -> None:
    """Take a version out of service now: 100 % of traffic to stable, aliases back, recorded."""
    out = _run("rollback", version, reason, tracking_uri, model_name, gateway_url)
    note = " (it was already rolled back)" if out.get("already") else ""
    _echo(out, as_json, f"version {out['version']} rolled back{note}; traffic on version {out['restored']}")


@click.command("promote")
@click.option("--version", required=True, help="Version to make champion.")
@_with_common
def promote_command(version: str, reason: str, tracking_uri: str | None, model_name: str | None,
                    gateway_url: str | None, as_json: bool) -> None:
    """Make a version champion now (the old champion becomes previous) and serve it alone."""
    out = _run("promote", version, reason, tracking_uri, model_name, gateway_url)
    _echo(out, as_json, f"version {out['version']} is {out['state']}")


@click.command("pause")
@click.option("--version", default=None, help="Canary to pause [default: the canary].")
@_with_common
def pause_command(version: str | None, reason: str, tracking_uri: str | None, model_name: str | None,
                  gateway_url: str | None, as_json: bool) -> None:
    """Hold the canary at its current weight (the rollout's next steps wait) until `mlcd resume`."""
    out = _run("pause", version, reason, tracking_uri, model_name, gateway_url)
    _echo(out, as_json, f"canary {out['version']} paused")


@click.command("resume")
@click.option("--version", default=None, help="Canary to resume [default: the canary].")
@_with_common
def resume_command(version: str | None, reason: str, tracking_uri: str | None, model_name: str | None,
                   gateway_url: str | None, as_json: bool) -> None:
    """Let a paused canary move on through its steps."""
    out = _run("resume", version, reason, tracking_uri, model_name, gateway_url)
    _echo(out, as_json, f"canary {out['version']} resumed")


def register(group: click.Group) -> None:
    for command in (rollback_command, promote_command, pause_command, resume_command):
        group.add_command(command)
