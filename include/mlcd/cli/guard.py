"""``mlcd rollback``, ``mlcd promote``, ``mlcd pause``, ``mlcd resume`` and ``mlcd watch``: the on-call engineer's
controls.

Each move is recorded in the version's rollout record with who asked (``cli:<login>``). A rollback routes all
traffic to stable first, then moves the aliases back. ``mlcd watch`` is the guard in the foreground (the same
analysis engine as ``mlcd_guard`` and every canary step): one line of evidence per poll; exit 0 healthy, 3 rolled
back, 4 unverified or undecided, 5 failed closed (metrics unreadable: canary at 0 %, rollout paused). Errors are
one line on stderr with exit code 1 (2 for usage).
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
         gateway_url: str | None, dry_run: bool = False, yes: bool = True) -> dict[str, Any]:
    """One manual action through :func:`mlcd.rollout.actions.manual`, the same code ``mlcd_control`` runs."""
    import sys

    from mlflow.exceptions import MlflowException

    from mlcd.registry import ModelRegistry, RegistryError
    from mlcd.rollout.actions import describe, manual
    from mlcd.rollout.router import RouterError, router_from_settings

    if not reason.strip():
        _fail(ValueError("--reason must not be empty"))
    s = get_settings()
    actor = _actor()
    try:
        registry = ModelRegistry(tracking_uri or s.tracking_uri, model_name or s.model_name)
        router = router_from_settings(gateway_url or s.gateway_url)
        if not dry_run and not yes and sys.stdin.isatty():
            # A person at a terminal sees what will happen before it does (scripts and pipes are not asked).
            target = version or manual(action, registry, router, None, reason, actor, dry_run=True)["version"]
            click.confirm(f"{describe(action, registry, router, target)[len('would '):]}\nProceed?",
                          abort=True, err=True)
        return manual(action, registry, router, version, reason, actor, dry_run=dry_run)
    except (RegistryError, RouterError, MlflowException, ValueError) as err:
        _fail(err)
    raise AssertionError("unreachable")  # pragma: no cover


_common = [
    click.option("--reason", required=True, help="Why (recorded in the rollout record)."),
    click.option("--dry-run", is_flag=True, help="Say what would be done; change nothing."),
    click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation at a terminal."),
    click.option("--tracking-uri", default=None, help="MLflow server (default: MLFLOW_TRACKING_URI, else the "
                 "platform `make up` started on MLCD_HOME)."),
    click.option("--model-name", default=None, help="Registered model (default: MLCD_MODEL_NAME)."),
    click.option("--gateway-url", default=None, help="Gateway admin API (default: MLCD_GATEWAY_URL, else the "
                 "platform on MLCD_HOME; its admin token from MLCD_ADMIN_TOKEN or MLCD_HOME/run/)."),
    click.option("--json", "as_json", is_flag=True, help="Print JSON."),
]


def _with_common(fn: Any) -> Any:
    for option in reversed(_common):
        fn = option(fn)
    return fn


def _echo(out: dict[str, Any], as_json: bool, line: str) -> None:
    if as_json:
        click.echo(json.dumps(out, indent=2))
    elif out.get("dry_run"):
        click.echo(f"dry run, nothing changed: {out['plan']}")
    else:
        click.echo(f"{line} (asked by {out['actor']})")


@click.command("rollback")
@click.option("--version", required=True, help="Version to roll back (the canary, or a champion in its bake): "
              "always explicit, so a finished canary is never mistaken for the champion.")
@_with_common
def rollback_command(version: str, reason: str, dry_run: bool, yes: bool, tracking_uri: str | None,
                     model_name: str | None, gateway_url: str | None, as_json: bool) -> None:
    """Take a version out of service now: 100 % of traffic to stable, aliases back, recorded."""
    out = _run("rollback", version, reason, tracking_uri, model_name, gateway_url, dry_run, yes)
    note = " (it was already rolled back)" if out.get("already") else ""
    _echo(out, as_json, f"version {out['version']} rolled back{note}; traffic on version {out.get('restored')}")


@click.command("promote")
@click.option("--version", required=True, help="Version to make champion.")
@_with_common
def promote_command(version: str, reason: str, dry_run: bool, yes: bool, tracking_uri: str | None,
                    model_name: str | None, gateway_url: str | None, as_json: bool) -> None:
    """Make a version champion now (the old champion becomes previous) and serve it alone."""
    out = _run("promote", version, reason, tracking_uri, model_name, gateway_url, dry_run, yes)
    _echo(out, as_json, f"version {out['version']} is {out.get('state')}")


@click.command("pause")
@click.option("--version", default=None, help="Canary to pause [default: the canary].")
@_with_common
def pause_command(version: str | None, reason: str, dry_run: bool, yes: bool, tracking_uri: str | None,
                  model_name: str | None, gateway_url: str | None, as_json: bool) -> None:
    """Hold the canary at its current weight (the rollout's next steps wait) until `mlcd resume`."""
    out = _run("pause", version, reason, tracking_uri, model_name, gateway_url, dry_run, yes)
    _echo(out, as_json, f"canary {out['version']} paused")


@click.command("resume")
@click.option("--version", default=None, help="Canary to resume [default: the canary].")
@_with_common
def resume_command(version: str | None, reason: str, dry_run: bool, yes: bool, tracking_uri: str | None,
                   model_name: str | None, gateway_url: str | None, as_json: bool) -> None:
    """Let a paused canary move on through its steps."""
    out = _run("resume", version, reason, tracking_uri, model_name, gateway_url, dry_run, yes)
    _echo(out, as_json, f"canary {out['version']} resumed")


EXIT_HEALTHY, EXIT_ROLLED_BACK, EXIT_UNVERIFIED, EXIT_FAIL_CLOSED = 0, 3, 4, 5


def _poll_line(result: Any, started: float) -> str:
    """One poll's evidence: phase, outcome, and each check's p-value and effect."""
    import time

    v = result.verdict
    head = f"[{time.time() - started:6.1f}s] {result.state.phase:<8} look {result.state.look:<3} {result.decision.value}"
    if v is None:
        return f"{head}: {result.reason}"
    checks = "; ".join(
        f"{c.name} {c.outcome.value} (p={c.p_value:.3g}, effect {c.effect:.3g})" if c.effect is not None
        else f"{c.name} {c.outcome.value}" for c in v.checks)
    held = getattr(result.state, "holdback", None)
    if result.state.phase == "bake" and held:  # the control: the previous champion held back on a small share
        weight = getattr(result.state, "holdback_weight", None) or 0.0
        return (f"{head}: champion {v.canary['requests']} req vs holdback {held} at {weight:.0%} (all of it "
                f"{v.stable['requests']} req); {checks}" + (f"; ALERTS {', '.join(v.alerts)}" if v.alerts else ""))
    return f"{head}: canary {v.canary['requests']} req vs stable {v.stable['requests']}; {checks}" + (
        f"; ALERTS {', '.join(v.alerts)}" if v.alerts else "")


@click.command("watch")
@click.option("--version", default=None, help="Version to watch [default: the first canary the gateway serves].")
@click.option("--gateway-url", default=None, help="Gateway whose /metrics is read (default: MLCD_GATEWAY_URL; "
              "with MLCD_METRICS_PROVIDER=prometheus the counters come from MLCD_PROMETHEUS_URL).")
@click.option("--poll-interval", type=float, default=2.0, show_default=True, help="Seconds between polls.")
@click.option("--bake", "bake_s", type=float, default=None, help="Seconds to watch after promotion "
              "[default: MLCD_GUARD_BAKE_S or 300].")
@click.option("--grace", "grace_s", type=float, default=300.0, show_default=True,
              help="Give up (healthy, nothing to watch) when no canary is served within this many seconds.")
@click.option("--timeout", "timeout_s", type=float, default=3600.0, show_default=True,
              help="Stop undecided (exit 4) after this many seconds.")
@click.option("--thresholds", default=None, help='Engine overrides as JSON, e.g. \'{"alpha": 0.001}\'.')
@click.option("--dry-run", is_flag=True, help="On a breach, report it (exit 3) without rolling back.")
@click.option("--tracking-uri", default=None, help="MLflow server for the rollback (default: MLFLOW_TRACKING_URI).")
@click.option("--model-name", default=None, help="Registered model (default: MLCD_MODEL_NAME).")
@click.option("--json", "as_json", is_flag=True, help="Print each poll and the outcome as JSON lines.")
def watch_command(version: str | None, gateway_url: str | None, poll_interval: float, bake_s: float | None,
                  grace_s: float, timeout_s: float, thresholds: str | None, dry_run: bool, tracking_uri: str | None,
                  model_name: str | None, as_json: bool) -> None:
    """Watch a canary (and its bake period) in the foreground; roll it back on a breach.

    Exit 0 healthy, 3 rolled back (or would be, with --dry-run), 4 unverified or still undecided at --timeout,
    5 failed closed (metrics unreadable for MLCD_METRICS_BLIND_S: canary at 0 %, rollout paused).
    """
    import time

    from mlcd.guard.watch import Decision, Guard, GuardConfig, scrape_from_settings, watch
    from mlcd.rollout.analysis import GuardThresholds

    s = get_settings()
    try:
        overrides = json.loads(thresholds) if thresholds else {}
        if not isinstance(overrides, dict):
            raise ValueError("--thresholds must be a JSON object")
        bake = bake_s if bake_s is not None else s.guard_bake_s  # MLCD_GUARD_BAKE_S, or the state's own
        config = GuardConfig(gateway_url or s.gateway_url, version, poll_interval, bake, grace_s,
                             GuardThresholds.from_dict(overrides))
        scrape = scrape_from_settings()  # MLCD_METRICS_PROVIDER: the gateway's /metrics or Prometheus
    except ValueError as err:
        _fail(err)
    started = time.time()

    def show(result: Any) -> None:
        if as_json:
            click.echo(json.dumps({"poll": result.as_dict()}))
        else:
            click.echo(_poll_line(result, started))

    try:
        result = watch(Guard(config, scrape), timeout_s=timeout_s, on_poll=show)
    except TimeoutError as err:
        click.echo(f"undecided: {err}")
        raise SystemExit(EXIT_UNVERIFIED) from None
    except OSError as err:
        _fail(err)
    if result.decision is Decision.BREACH:
        if dry_run:
            click.echo(f"BREACH (dry run, nothing moved): {result.reason}")
            raise SystemExit(EXIT_ROLLED_BACK)
        from mlcd.registry import ModelRegistry, RegistryError
        from mlcd.rollout.actions import rollback
        from mlcd.rollout.router import RouterError, router_from_settings

        try:
            registry = ModelRegistry(tracking_uri or s.tracking_uri, model_name or s.model_name)
            out = rollback(registry, router_from_settings(config.gateway_url), str(result.state.version),
                           f"mlcd watch: {result.reason}", result.as_dict(), _actor())
        except (RegistryError, RouterError, ValueError, OSError) as err:
            _fail(err)
        click.echo(f"version {out.version} rolled back; traffic on version {out.restored}. Reason: {result.reason}")
        raise SystemExit(EXIT_ROLLED_BACK)
    if result.decision is Decision.BLIND:
        if dry_run:
            click.echo(f"FAIL CLOSED (dry run, nothing moved): {result.reason}")
            raise SystemExit(EXIT_FAIL_CLOSED)
        from mlcd.registry import ModelRegistry
        from mlcd.rollout.failsafe import fail_closed
        from mlcd.rollout.router import RouterError, router_from_settings

        try:
            router = router_from_settings(config.gateway_url)
        except (RouterError, ValueError) as err:
            _fail(err)
        registry = ModelRegistry(tracking_uri or s.tracking_uri, model_name or s.model_name)
        done = fail_closed(router, registry, str(result.state.version), f"mlcd watch: {result.reason}", _actor())
        click.echo(f"failed closed: canary {done.version} at 0% ({'traffic safe' if done.traffic_safe else 'TRAFFIC NOT MOVED'}"
                   f", {'rollout paused' if done.paused else 'pause NOT recorded'}). Reason: {result.reason}"
                   + (f"; {done.error}" if done.error else ""))
        raise SystemExit(EXIT_FAIL_CLOSED if done.traffic_safe else 1)
    if result.decision is Decision.UNVERIFIED:
        click.echo(f"unverified: {result.reason}")
        raise SystemExit(EXIT_UNVERIFIED)
    click.echo(f"healthy: {result.reason}")
    raise SystemExit(EXIT_HEALTHY)


def register(group: click.Group) -> None:
    for command in (rollback_command, promote_command, pause_command, resume_command, watch_command):
        group.add_command(command)
