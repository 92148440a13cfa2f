"""``mlcd status``, ``mlcd history`` and ``mlcd reconcile``: the registry's aliases, versions and rollout record."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from mlcd.settings import get_settings


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    # The last column (a reason) is left unpadded so long sentences do not widen every line.
    fmt = lambda row: "  ".join(c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)) + (  # noqa: E731
        "  " + row[-1] if len(row) > 1 else row[0]
    )
    lines = [fmt(list(headers)), fmt(["-" * w for w in widths])]
    lines += [fmt(r) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def _registry(tracking_uri: str | None, model_name: str | None) -> Any:
    from mlcd.registry import ModelRegistry

    settings = get_settings()
    return ModelRegistry(tracking_uri or settings.tracking_uri, model_name or settings.model_name)


def _fail(err: Exception) -> None:
    click.echo(f"error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", err=True)
    raise SystemExit(1)


def _acc(value: float | None) -> str | None:
    return None if value is None else f"{value:.4f}"


def _p(value: str | None) -> str | None:
    return None if value in (None, "none") else value


_common = [
    click.option("--tracking-uri", default=None, help="MLflow server (default: MLFLOW_TRACKING_URI / settings)."),
    click.option("--model-name", default=None, help="Registered model (default: MLCD_MODEL_NAME / settings)."),
    click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables."),
]


def _with_common(fn: Any) -> Any:
    for option in reversed(_common):
        fn = option(fn)
    return fn


@click.command("status")
@_with_common
def status_command(tracking_uri: str | None, model_name: str | None, as_json: bool) -> None:
    """Aliases (champion, canary, previous) and every version with its state and gate verdict."""
    from mlcd.registry import RegistryError

    try:
        status = _registry(tracking_uri, model_name).status()
    except (RegistryError, ValueError) as err:
        _fail(err)
    if as_json:
        click.echo(json.dumps(status, indent=2))
        return
    states = {v["version"]: v for v in status["versions"]}
    click.echo(f"model {status['model_name']} at {status['tracking_uri']}\n")
    click.echo(
        _table(
            ["ALIAS", "VERSION", "STATE", "SINCE"],
            [
                [a, v, states.get(v, {}).get("state") if v else None, states.get(v, {}).get("since") if v else None]
                for a, v in status["aliases"].items()
            ],
        )
    )
    click.echo("")
    if not status["versions"]:
        click.echo("no versions registered yet")
    else:
        click.echo(
            _table(
                ["VERSION", "STATE", "ALIASES", "VERDICT", "ACCURACY", "P-VALUE", "SINCE", "REASON"],
                [
                    [v["version"], v["state"], ",".join(v["aliases"]) or None, v["verdict"], _acc(v["accuracy"]),
                     _p(v["p_value"]), v["since"], v["reason"]]
                    for v in status["versions"]
                ],
            )
        )
    if status["problems"]:
        click.echo("\nWARNING: aliases and rollout records disagree:")
        for problem in status["problems"]:
            click.echo(f"  - {problem}")
        # The usual cause: an alias moved outside mlcd (MLflow's own alias editor), which writes no rollout record.
        click.echo("  (an alias moved outside mlcd, e.g. with MLflow's alias editor? `mlcd reconcile --dry-run` shows "
                   "the repair; move aliases with mlcd promote/rollback or mlcd_control)")
    if status.get("violations"):
        click.echo("\nVIOLATIONS (repair with `mlcd reconcile`):")
        for v in status["violations"]:
            click.echo(f"  - {v['violation']}: {v['message']}")


@click.command("history")
@_with_common
@click.option("--version", "only_version", default=None, help="Only this version's entries.")
@click.option("--limit", type=int, default=50, show_default=True, help="Most recent entries to show.")
@click.option("--wide", is_flag=True, help="Whole reasons (default: shortened at a word to fit a terminal).")
def history_command(
    tracking_uri: str | None, model_name: str | None, as_json: bool, only_version: str | None, limit: int,
    wide: bool = False,
) -> None:
    """Which version held which alias when, and every recorded transition with its reason."""
    from mlcd.registry import RegistryError

    try:
        registry = _registry(tracking_uri, model_name)
        intervals = registry.alias_history()
        entries = registry.history()
    except (RegistryError, ValueError) as err:
        _fail(err)
    if only_version is not None:
        entries = [e for e in entries if e["version"] == str(only_version)]
        intervals = [iv for iv in intervals if iv["version"] == str(only_version)]
    entries = entries[-limit:] if limit > 0 else entries
    if as_json:
        click.echo(json.dumps({"aliases": intervals, "entries": entries}, indent=2))
        return
    click.echo(f"model {registry.model_name} at {registry.tracking_uri}\n")
    from mlcd.registry.tags import Alias

    champions = [iv for iv in intervals if iv["alias"] == Alias.CHAMPION]
    click.echo("champion timeline")
    if champions:
        click.echo(
            _table(
                ["VERSION", "FROM", "UNTIL", "BY", "WHY"],
                [[iv["version"], iv["start"], iv["end"] or "now", iv["actor"], iv["reason"]] for iv in champions],
            )
        )
    else:
        click.echo("no champion yet")
    others = [iv for iv in intervals if iv["alias"] != Alias.CHAMPION]
    if others:
        click.echo("\nother aliases")
        click.echo(
            _table(
                ["ALIAS", "VERSION", "FROM", "UNTIL", "WHY"],
                [[iv["alias"], iv["version"], iv["start"], iv["end"] or "now", iv["reason"]] for iv in others],
            )
        )
    click.echo("\nrecord")
    if not entries:
        click.echo("no entries")
        return
    rows = []
    for e in entries:
        change = f"{e.get('from') or '∅'} -> {e['to']}" if "to" in e else f"event {e.get('event')}"
        rows.append([e.get("t"), e["version"], change, e.get("by"), e.get("dag_run"), _entry_reason(e, wide)])
    click.echo(_table(["TIME", "VERSION", "CHANGE", "BY", "DAG RUN", "REASON"], rows))
    if not wide:
        click.echo("\n(reasons shortened to fit a terminal: --wide for the whole text, --json for every field)")


REASON_WIDTH = 90  # a history line stays under ~200 characters (time, version, change, actor, DAG run, reason)


def _shorten(text: str, width: int = REASON_WIDTH) -> str:
    """Cut at a word boundary with an ellipsis, never in the middle of a word or a JSON key."""
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    cut = text[: width - 1].rsplit(" ", 1)[0].rstrip(",;:")
    return cut + "…"


def _entry_reason(entry: dict[str, Any], wide: bool = False) -> str | None:
    """A history entry's reason for people: its ``why``, else its details as ``key=value`` (a canary window as
    ``25%: pass -> advance; reasons``), shortened unless ``wide``."""
    d = entry.get("d") or {}
    if entry.get("why"):
        text = str(entry["why"])
    elif entry.get("event") == "canary_step" and isinstance(d, dict):
        text = f"{d.get('weight')}%: {d.get('outcome')} -> {d.get('action')}; " + "; ".join(map(str, d.get("reasons") or []))
    elif isinstance(d, dict) and d:
        text = ", ".join(f"{k}={v}" for k, v in d.items() if isinstance(v, (str, int, float, bool)) or v is None)
        text = text or ", ".join(sorted(map(str, d)))
    else:
        return None
    return text if wide else _shorten(text)


@click.command("reconcile")
@_with_common
@click.option("--dry-run", is_flag=True, help="Only list the violations; change nothing.")
@click.option("--retries", type=int, default=3, show_default=True,
              help="Attempts while MLflow is unavailable (a few seconds apart).")
def reconcile_command(
    tracking_uri: str | None, model_name: str | None, as_json: bool, dry_run: bool, retries: int
) -> None:
    """Repair the registry's invariants: one champion, never on a rolled-back version, previous as history says.

    Idempotent: on a consistent registry it changes nothing. Each repair is printed with its reason and recorded
    on the version (a ``reconciled`` history event and ``mlcd.reconciled`` tags). MLflow calls give up within
    seconds; while MLflow is down it retries ``--retries`` times, then exits 1 (run it again later).
    """
    import time

    from mlcd.registry import RegistryError, RegistryUnavailableError
    from mlcd.registry.retries import bounded_mlflow_retries

    result: dict[str, Any] = {}
    for attempt in range(max(1, retries)):
        try:
            with bounded_mlflow_retries():
                result = _registry(tracking_uri, model_name).reconcile(dry_run=dry_run)
            break
        except RegistryUnavailableError as err:
            if attempt + 1 >= max(1, retries):
                _fail(err)
            time.sleep(2.0)
        except (RegistryError, ValueError) as err:
            _fail(err)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        for repair in result["repairs"]:
            click.echo(f"repaired {repair['line']}")
        for left in result["left"]:
            click.echo(f"{'violation' if dry_run else 'left for a person'}: {left['violation']}: {left['message']}")
        if not result["repairs"] and not result["left"]:
            click.echo("consistent: nothing to repair")
    if result["left"] and not dry_run:
        raise SystemExit(1)


def register(group: click.Group) -> None:
    group.add_command(status_command)
    group.add_command(history_command)
    group.add_command(reconcile_command)
