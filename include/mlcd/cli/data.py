"""Data commands: ``mlcd validate``, ``mlcd intake``, ``mlcd land``, ``mlcd batches``, ``mlcd sample-batches``."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from mlcd.settings import get_settings

_FILES = click.Path(exists=True, dir_okay=False, readable=True, path_type=Path)


@click.command("validate")
@click.argument("files", nargs=-1, required=True, type=_FILES)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file instead of text.")
def validate_command(files: tuple[Path, ...], as_json: bool) -> None:
    """Check batch FILES against the expectation suite; exit 1 if any fails. Files are only read.

    Each file is decoded within the configured limits (MLCD_MAX_*), streamed from disk: memory stays bounded by
    the batch limit whatever the file declares.
    """
    from mlcd.data.intake import judge
    from mlcd.files import printable_name
    from mlcd.validation.gate import get_gate

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    settings = get_settings()
    # An ad-hoc check writes nothing: no Data Docs page (the platform's site keeps the runs' validations only).
    gate = get_gate(settings.expectations_dir, data_docs_dir=None)
    failed = 0
    for path in files:
        shown = printable_name(str(path))
        try:
            passed, reason, _details, n_images = judge(path, shown, settings, gate=gate)
        except Exception as err:  # noqa: BLE001 - one file's failure is its line, the others are still checked
            passed, reason, n_images = False, f"{type(err).__name__}: {printable_name(' '.join(str(err).split()))}", 0
        failed += not passed
        if as_json:
            click.echo(json.dumps({"file": shown, "passed": passed, "reason": reason, "n_images": n_images}))
        elif passed:
            click.echo(f"PASS {shown} ({n_images} images)")
        else:
            click.echo(f"FAIL {shown}: {reason}")
    sys.exit(1 if failed else 0)


@click.command("intake")
def intake_command() -> None:
    """Collect and validate the landing zone now, in the foreground, as mlcd_retrain's collect and validate do.

    One line per file (accepted, quarantined, left, settling, already judged) and the snapshot; exit 1 if any
    batch was quarantined, 0 otherwise (also when there was nothing new).
    """
    from mlcd.data.intake import NoTrainingDataError, scan, validate

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    settings = get_settings()
    seen = scan(settings)
    for item in seen.known:
        click.echo(f"known        {item['name']} ({item['batch_hash'][:12]}): judged before")
    for item in seen.settling:
        click.echo(f"settling     {item['name']}: {item['reason']}")
    try:
        # The ledger and the snapshot end as the DAG's validate leaves them (it snapshots before it stops the run);
        # allow_partial only keeps the report coming back so every line can be printed.
        report = validate(seen.pending, settings, run_id="mlcd-intake", allow_partial=True)
    except NoTrainingDataError as err:
        # Nothing accepted ever: say so; the lines above still say what happened to each file.
        from mlcd.data.ledger import QUARANTINED, Ledger

        ledger = Ledger(settings.ledger_path)
        quarantined = [ledger.get(item["batch_hash"]) for item in seen.pending]
        for record in quarantined:
            if record is not None and record.state == QUARANTINED:
                click.echo(f"quarantined  {record.name} ({record.batch_hash[:12]}): {record.reason}")
        click.echo(f"no snapshot: {err}")
        sys.exit(1 if any(r is not None and r.state == QUARANTINED for r in quarantined) else 0)
    for line in report.summary_lines():
        click.echo(line)
    sys.exit(1 if report.quarantined else 0)


@click.command("land")
@click.argument("files", nargs=-1, required=True, type=_FILES)
def land_command(files: tuple[Path, ...]) -> None:
    """Copy batch FILES into the landing zone (MLCD_LANDING_URI); the sources are left as they are."""
    from mlcd.data.landing import LandingZone

    zone = LandingZone(get_settings().landing_uri)
    for path in files:
        landed = zone.land(path)
        click.echo(f"landed {path} -> {landed.uri}")


@click.command("batches")
@click.option("--state", type=click.Choice(["landed", "accepted", "quarantined"]), default=None)
def batches_command(state: str | None) -> None:
    """List landed batches from the ledger with their state and reason."""
    from mlcd.data.ledger import Ledger

    settings = get_settings()
    ledger = Ledger(settings.ledger_path)
    records = ledger.list(state)
    # Which ledger was read, always: an empty answer from the wrong MLCD_HOME must not look like "nothing landed".
    where = settings.ledger_url or str(ledger.path or settings.ledger_path)
    click.echo(f"ledger: {where} (MLCD_HOME={settings.home})")
    if not records:
        click.echo(f"no batches recorded{' in state ' + state if state else ''}")
        return
    click.echo(f"{'state':<12} {'batch':<14} {'images':>7}  {'name':<24} reason")
    for r in records:
        n_images = "" if r.n_images is None else str(r.n_images)
        click.echo(f"{r.state:<12} {r.batch_hash[:12]:<14} {n_images:>7}  {r.name:<24} {r.reason or ''}")


@click.command("sample-batches")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--sizes", default=None, help="Images per batch, comma-separated [default: two batches of up to 3000 "
              "images, halved to fit a smaller reference set (scikit-learn's 1,797 digits: 898 each)].")
@click.option("--seed", type=int, default=0, show_default=True)
def sample_batches_command(out: Path, sizes: str | None, seed: int) -> None:
    """Cut disjoint sample batches from the reference dataset (MLCD_DATA, else scikit-learn's digits)."""
    from mlcd.data.reference import load_reference, write_sample_batches

    ref = load_reference()
    if sizes is None:
        # Two batches whatever the reference set: 3,000 images each on MNIST, half the set each on a small one.
        counts = [min(3000, int(ref.n_images) // 2)] * 2
    else:
        try:
            counts = [int(s) for s in sizes.split(",") if s.strip()]
        except ValueError:
            raise click.BadParameter(f"{sizes!r} is not a comma-separated list of integers",
                                     param_hint="--sizes") from None
    click.echo(f"cutting {len(counts)} batches ({', '.join(f'{c:,}' for c in counts)} images) from {ref.source}",
               err=True)
    for path in write_sample_batches(out, counts, seed=seed, ref=ref):
        click.echo(str(path))


def register(group: click.Group) -> None:
    for command in (validate_command, intake_command, land_command, batches_command, sample_batches_command):
        group.add_command(command)
