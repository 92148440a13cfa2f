"""Collect and validate landed batches, then snapshot everything accepted. Airflow-free.

``collect`` finds what is new in the landing zone; ``validate`` judges each new batch (structure first, then the
GX suite), accepts or quarantines it, records the decision in the ledger, and builds the training snapshot of all
accepted batches. Both are idempotent: a re-run after a crash finds the ledger rows and converges.

One landed file never blocks another: each file is handled on its own, and whatever it does (an undecodable
name, unreadable bytes, a size or a declared shape beyond the limits, a copy still in progress) ends as a line
about that file, never as an exception out of the task. A file is taken only once it has settled (unchanged size
and mtime for ``MLCD_SETTLE_S``); until then it is reported as settling and left for a later run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlcd.data.batch import BatchError, BatchLimits, load_batch
from mlcd.data.landing import (
    LandedFile,
    LandingZone,
    SourceError,
    SourceGone,
    quarantine_file,
    store_accepted_file,
    uri_of,
)
from mlcd.data.ledger import ACCEPTED, LANDED, QUARANTINED, Ledger
from mlcd.data.snapshot import build_snapshot
from mlcd.files import clean_stale_staging, printable_name, staging_tag
from mlcd.settings import Settings, get_settings
from mlcd.storage import Storage

log = logging.getLogger(__name__)

STAGING_MARKER = ".staging"


class NoTrainingDataError(RuntimeError):
    """Nothing has ever been accepted: there is nothing to train on."""


class QuarantinedBatchesError(RuntimeError):
    """Batches of this run were refused; the message lists each with its reason."""


@dataclass
class IntakeReport:
    accepted: list[dict[str, Any]] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    # Collected but not decided by this run, each with why (changed since collect, our own storage failed).
    left: list[dict[str, Any]] = field(default_factory=list)
    snapshot_id: str | None = None
    snapshot_path: str | None = None  # the local folder, or the URL on an object store (older readers)
    snapshot_uri: str | None = None  # full URL (file:///… locally): what train and evaluate are handed
    counts: dict[str, int] = field(default_factory=dict)
    data_docs: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def summary_lines(self) -> list[str]:
        lines = [f"accepted     {b['name']} ({b['n_images']} images, {b['batch_hash'][:12]})" for b in self.accepted]
        lines += [f"quarantined  {b['name']} ({b['batch_hash'][:12]}): {b['reason']}" for b in self.quarantined]
        lines += [f"left         {b['name']}: {b['reason']}" for b in self.left]
        if self.snapshot_id:
            lines.append(f"snapshot     {self.snapshot_id} {self.counts} at {self.snapshot_uri or self.snapshot_path}")
        return lines


@dataclass
class Scan:
    """What :func:`scan` saw: batches to judge, files not settled yet, files whose content was judged before."""

    pending: list[dict[str, Any]] = field(default_factory=list)
    settling: list[dict[str, Any]] = field(default_factory=list)
    known: list[dict[str, Any]] = field(default_factory=list)


def _item(landed: LandedFile, batch_hash: str, size: int, refused: str | None = None) -> dict[str, Any]:
    """A pending batch as it travels to ``validate`` (XCom): JSON- and UTF-8-safe."""
    item: dict[str, Any] = {"batch_hash": batch_hash, "name": landed.display_name, "uri": landed.display_uri,
                            "ref": landed.ref, "size_bytes": size, "mtime": landed.mtime}
    if refused is not None:
        item["refused"] = refused
    return item


@dataclass(frozen=True)
class Identified:
    """What a settled landed file is, by content: its hash, or a refusal, or nothing to judge this time."""

    batch_hash: str | None  # None: gone, or changed while it was read (looked at again next time)
    refused: str | None = None  # unreadable or too large: validate quarantines it with this reason
    not_yet: str | None = None  # why it is left for a later look


def identify(zone: LandingZone, ledger: Ledger, landed: LandedFile, max_bytes: int) -> Identified:
    """Hash a settled file once per size and mtime (the ledger remembers sightings); never raises for one file.

    Collect and the landing watcher both call this, so a file is named the same way wherever it is seen.
    """
    try:
        batch_hash = ledger.hash_seen_as(landed.uri, landed.size_bytes, landed.mtime_ns)
        if batch_hash is None:
            batch_hash = zone.sha256(landed, max_bytes)
            now_stat = zone.stat(landed)
            if (now_stat.size_bytes, now_stat.mtime_ns) != (landed.size_bytes, landed.mtime_ns):
                return Identified(None, not_yet="changed while it was read")
            ledger.note_sighting(landed.uri, landed.size_bytes, landed.mtime_ns, batch_hash)
        return Identified(batch_hash)
    except SourceGone:
        return Identified(None)  # tidied away between the listing and the read: nothing to judge
    except SourceError as err:
        # Unreadable or too large: recorded under a key made of its place, size and mtime, and quarantined
        # by validate with this reason; a new copy (other size or mtime) is looked at afresh.
        return Identified(landed.stat_key(), str(err))
    except Exception as err:  # noqa: BLE001 - one file must never stop the others
        return Identified(landed.stat_key(), f"cannot be read: {type(err).__name__}: {printable_name(str(err))}")


def scan(settings: Settings | None = None, *, now: float | None = None) -> Scan:
    """Look at every file in the landing zone once, each on its own; see :func:`collect`."""
    settings = settings or get_settings()
    zone = LandingZone(settings.landing_uri)
    ledger = Ledger(settings.ledger_path)
    result = Scan()
    pending: dict[str, dict[str, Any]] = {}
    undecided = {r.batch_hash for r in ledger.list(LANDED)}
    for landed in zone.list():
        if not landed.settled(settings.settle_s, now):
            result.settling.append({"name": landed.display_name, "uri": landed.display_uri,
                                    "reason": f"still settling (changed less than {settings.settle_s:g} s ago)"})
            continue
        seen = identify(zone, ledger, landed, settings.max_batch_bytes)
        if seen.batch_hash is None:
            if seen.not_yet:
                result.settling.append({"name": landed.display_name, "uri": landed.display_uri,
                                        "reason": seen.not_yet})
            continue
        batch_hash, refused = seen.batch_hash, seen.refused
        if ledger.see(batch_hash, landed.display_name, landed.display_uri, landed.size_bytes) or batch_hash in undecided:
            pending.setdefault(batch_hash, _item(landed, batch_hash, landed.size_bytes, refused))
        else:
            result.known.append({"name": landed.display_name, "batch_hash": batch_hash})
    result.pending = list(pending.values())
    for item in result.pending:
        log.info("new batch %s (%s, %d bytes)", item["name"], item["batch_hash"][:12], item["size_bytes"])
    for item in result.settling:
        log.info("not yet: %s: %s", item["name"], item["reason"])
    if not pending:
        log.info("no new batches in %s", printable_name(zone.uri))
    return result


def collect(settings: Settings | None = None) -> list[dict[str, Any]]:
    """New batches in the landing zone: hashed, recorded as ``landed``, not yet judged.

    Files are listed by stat; a file is read (streamed, to hash it) once per size and mtime. Files not settled
    yet are skipped for a later run; unreadable ones are passed on with their refusal.

    Returns:
        ``[{"batch_hash", "name", "uri", "ref", "size_bytes", "mtime", "refused"?}]`` for every batch whose
        content has no decision yet, including ones a crashed earlier run saw but did not judge.
    """
    return scan(settings).pending


def judge(
    source: bytes | str | Path, name: str, settings: Settings, *, gate: Any = None
) -> tuple[bool, str | None, dict[str, Any], int]:
    """Judge one batch (bytes or a local file): ``(passed, reason, details, n_images)``; never raises on content.

    The file is decoded within the configured limits (:class:`mlcd.data.batch.BatchLimits`) before the suite
    runs, so a file declaring more than the limits is refused without being inflated.
    """
    try:
        batch = load_batch(source, BatchLimits.from_settings(settings))
    except BatchError as err:
        return False, str(err), {"stage": "structure"}, 0
    if gate is None:
        from mlcd.validation.gate import get_gate

        gate = get_gate(settings.expectations_dir, data_docs_dir=settings.data_docs_dir)
    try:
        outcome = gate.validate(batch, batch_label=name)
    except Exception as err:  # noqa: BLE001 - content the suite could not even evaluate is refused, not fatal
        reason = f"the suite could not evaluate this batch: {type(err).__name__}: {printable_name(' '.join(str(err).split()))}"
        return False, reason, {"stage": "expectations"}, len(batch)
    details = {"stage": "expectations", "failures": outcome.failures, "data_docs": _docs_location(settings, outcome.data_docs)}
    return outcome.passed, outcome.reason, details, len(batch)


def judge_bytes(data: bytes, name: str, settings: Settings) -> tuple[bool, str | None, dict[str, Any], int]:
    """:func:`judge` of bytes in memory (kept for callers that hold the bytes)."""
    return judge(data, name, settings)


def _staging_dir(settings: Settings) -> Path:
    return settings.home / "staging"


def _docs_location(settings: Settings, rendered: str | None) -> str | None:
    """Where the Data Docs page will be read: the rendered file locally, its storage URL on an object store."""
    if rendered is None or settings.storage_is_local:
        return rendered
    return Storage.from_settings(settings).uri("data_docs", "index.html")


def publish_data_docs(settings: Settings) -> int:
    """Upload the locally rendered Data Docs site to ``<storage>/data_docs`` (a no-op on file:// storage).

    GX renders into a local folder only; on an object store each worker renders into its own
    ``MLCD_HOME/data_docs`` and uploads the pages after its validation, so the site is read from storage.
    """
    if settings.storage_is_local or not settings.data_docs_dir.is_dir():
        return 0
    return Storage.from_settings(settings).put_tree(settings.data_docs_dir, "data_docs")


def _decide_one(item: dict[str, Any], settings: Settings, ledger: Ledger, gate: Any, run_id: str | None,
                report: IntakeReport) -> None:
    """Judge one pending batch and record the verdict; raises only for failures of mlcd's own storage."""
    batch_hash, name = item["batch_hash"], item["name"]
    storage = Storage.from_settings(settings)
    quarantine_at, accepted_at = storage.child("quarantine"), storage.child("batches")
    if item.get("refused"):
        folder = quarantine_file(None, batch_hash, name, item["refused"], {"stage": "read"}, quarantine_at)
        ledger.decide(batch_hash, QUARANTINED, reason=item["refused"], details={"stage": "read"}, n_images=0,
                      stored_path=str(folder), run_id=run_id)
        log.warning("quarantined %s: %s", name, item["refused"])
        return
    landed = LandedFile(uri=uri_of(item.get("ref") or item["uri"]), name=name, size_bytes=item["size_bytes"],
                        mtime=item.get("mtime"))
    staged = _staging_dir(settings) / f"{batch_hash[:64]}.{staging_tag()}{STAGING_MARKER}"
    try:
        try:
            content_hash, _size = LandingZone(settings.landing_uri).copy_to(landed, staged, settings.max_batch_bytes)
        except SourceGone as err:
            log.warning("%s %s", name, err)
            report.left.append({"batch_hash": batch_hash, "name": name, "reason": str(err)})
            return
        except SourceError as err:
            reason = str(err)
            folder = quarantine_file(None, batch_hash, name, reason, {"stage": "read"}, quarantine_at)
            ledger.decide(batch_hash, QUARANTINED, reason=reason, details={"stage": "read"}, n_images=0,
                          stored_path=str(folder), run_id=run_id)
            log.warning("quarantined %s: %s", name, reason)
            return
        if content_hash != batch_hash:
            # The file was replaced after collect: its new content is a new batch for the next run.
            ledger.forget_sightings(landed.uri)
            reason = "changed since it was collected; its new content is judged by the next run"
            log.warning("%s %s", name, reason)
            report.left.append({"batch_hash": batch_hash, "name": name, "reason": reason})
            return
        # From here on only the private copy is read: what is judged is what is stored.
        passed, verdict, details, n_images = judge(staged, name, settings, gate=gate)
        if passed:
            stored = store_accepted_file(staged, batch_hash, accepted_at)
            ledger.decide(batch_hash, ACCEPTED, reason=None, details=details, n_images=n_images,
                          stored_path=str(stored), run_id=run_id)
            log.info("accepted %s: %d images", name, n_images)
        else:
            folder = quarantine_file(staged, batch_hash, name, verdict or "refused", details, quarantine_at)
            ledger.decide(batch_hash, QUARANTINED, reason=verdict, details=details, n_images=n_images,
                          stored_path=str(folder), run_id=run_id)
            log.warning("quarantined %s: %s (copy and reason.json in %s)", name, verdict, folder)
        report.data_docs = details.get("data_docs") or report.data_docs
    finally:
        staged.unlink(missing_ok=True)


def validate(
    pending: list[dict[str, Any]],
    settings: Settings | None = None,
    *,
    run_id: str | None = None,
    allow_partial: bool = False,
) -> IntakeReport:
    """Judge pending batches, record decisions, and snapshot all accepted batches.

    Args:
        pending: the output of :func:`collect`.
        run_id: recorded in the ledger (the DAG run id).
        allow_partial: go on to training when some batches of this run were quarantined; by default the run
            stops (the good batches stay accepted and are trained on by the next run).

    Raises:
        QuarantinedBatchesError: a batch of this run was refused (after every decision was recorded).
        NoTrainingDataError: no batch has ever been accepted.
    """
    settings = settings or get_settings()
    ledger = Ledger(settings.ledger_path)
    report = IntakeReport()
    clean_stale_staging(_staging_dir(settings), STAGING_MARKER)
    gate = None
    if any(not item.get("refused") for item in pending):
        from mlcd.validation.gate import get_gate

        # Built before any verdict: a missing or broken suite is the deployment's error, not the batches'.
        gate = get_gate(settings.expectations_dir, data_docs_dir=settings.data_docs_dir)
    for item in pending:
        record = ledger.get(item["batch_hash"])
        if record is not None and record.state != LANDED:
            continue  # decided by an earlier attempt of this run: converge, do not judge twice
        try:
            _decide_one(item, settings, ledger, gate, run_id, report)
        except Exception as err:  # noqa: BLE001 - our own storage failed for this file: leave it landed, go on
            reason = f"not decided, will be retried: {type(err).__name__}: {printable_name(' '.join(str(err).split()))}"
            log.error("%s %s", item["name"], reason)
            report.left.append({"batch_hash": item["batch_hash"], "name": item["name"], "reason": reason})
    for item in pending:
        record = ledger.get(item["batch_hash"])
        if record is None:
            continue
        entry = {"batch_hash": record.batch_hash, "name": record.name, "n_images": record.n_images,
                 "reason": record.reason}
        if record.state == ACCEPTED:
            report.accepted.append(entry)
        elif record.state == QUARANTINED:
            report.quarantined.append(entry)
    if gate is not None:
        try:
            publish_data_docs(settings)
        except Exception as err:  # noqa: BLE001 - the verdicts stand without their pages; say why
            log.warning("Data Docs not uploaded: %s: %s", type(err).__name__, printable_name(str(err)))
    accepted = {r.batch_hash: r.stored_path for r in ledger.list(ACCEPTED) if r.stored_path}
    if accepted:
        snapshot = build_snapshot(accepted, Storage.from_settings(settings).uri("snapshots"))  # type: ignore[arg-type]
        report.snapshot_id = snapshot.snapshot_id
        report.snapshot_path = snapshot.location
        report.snapshot_uri = snapshot.uri
        report.counts = snapshot.counts
    for line in report.summary_lines():
        log.info(line)
    if report.quarantined and not allow_partial:
        names = "; ".join(f"{b['name']}: {b['reason']}" for b in report.quarantined)
        raise QuarantinedBatchesError(f"{len(report.quarantined)} batch(es) quarantined, run stopped — {names}")
    if not accepted:
        raise NoTrainingDataError(
            f"no accepted batches yet: land one in {settings.landing_uri} (mlcd land FILE) and trigger mlcd_retrain"
        )
    return report
