"""Collect and validate landed batches, then snapshot everything accepted. Airflow-free.

``collect`` finds what is new in the landing zone; ``validate`` judges each new batch (structure first, then the
GX suite), accepts or quarantines it, records the decision in the ledger, and builds the training snapshot of all
accepted batches. Both are idempotent: a re-run after a crash finds the ledger rows and converges.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from mlcd.data.batch import BatchError, load_batch
from mlcd.data.landing import LandedFile, LandingZone, quarantine, sha256_bytes, store_accepted
from mlcd.data.ledger import ACCEPTED, LANDED, QUARANTINED, Ledger
from mlcd.data.snapshot import build_snapshot
from mlcd.settings import Settings, get_settings

log = logging.getLogger(__name__)


class NoTrainingDataError(RuntimeError):
    """Nothing has ever been accepted: there is nothing to train on."""


class QuarantinedBatchesError(RuntimeError):
    """Batches of this run were refused; the message lists each with its reason."""


@dataclass
class IntakeReport:
    accepted: list[dict[str, Any]] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    snapshot_id: str | None = None
    snapshot_path: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    data_docs: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def summary_lines(self) -> list[str]:
        lines = [f"accepted     {b['name']} ({b['n_images']} images, {b['batch_hash'][:12]})" for b in self.accepted]
        lines += [f"quarantined  {b['name']} ({b['batch_hash'][:12]}): {b['reason']}" for b in self.quarantined]
        if self.snapshot_id:
            lines.append(f"snapshot     {self.snapshot_id} {self.counts} at {self.snapshot_path}")
        return lines


def collect(settings: Settings | None = None) -> list[dict[str, Any]]:
    """New batches in the landing zone: hashed, recorded as ``landed``, not yet judged.

    Returns:
        ``[{"batch_hash", "name", "uri", "size_bytes"}]`` for every batch whose content has no decision yet,
        including ones a crashed earlier run saw but did not judge.
    """
    settings = settings or get_settings()
    zone = LandingZone(settings.landing_uri)
    ledger = Ledger(settings.ledger_path)
    pending: dict[str, dict[str, Any]] = {}
    undecided = {r.batch_hash for r in ledger.list(LANDED)}
    for landed in zone.list():
        data = zone.read(landed)
        batch_hash = sha256_bytes(data)
        if ledger.see(batch_hash, landed.name, landed.uri, len(data)) or batch_hash in undecided:
            pending.setdefault(
                batch_hash,
                {"batch_hash": batch_hash, "name": landed.name, "uri": landed.uri, "size_bytes": len(data)},
            )
    for item in pending.values():
        log.info("new batch %s (%s, %d bytes)", item["name"], item["batch_hash"][:12], item["size_bytes"])
    if not pending:
        log.info("no new batches in %s", zone.uri)
    return list(pending.values())


def judge_bytes(data: bytes, name: str, settings: Settings) -> tuple[bool, str | None, dict[str, Any], int]:
    """Judge one batch's bytes: ``(passed, reason, details, n_images)``; never raises on bad content."""
    from mlcd.validation.gate import get_gate

    try:
        batch = load_batch(data)
    except BatchError as err:
        return False, str(err), {"stage": "structure"}, 0
    outcome = get_gate(settings.expectations_dir, data_docs_dir=settings.data_docs_dir).validate(
        batch, batch_label=name
    )
    details = {"stage": "expectations", "failures": outcome.failures, "data_docs": outcome.data_docs}
    return outcome.passed, outcome.reason, details, len(batch)


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
    for item in pending:
        record = ledger.get(item["batch_hash"])
        if record is not None and record.state != LANDED:
            continue  # decided by an earlier attempt of this run: converge, do not judge twice
        landed = LandedFile(uri=item["uri"], name=item["name"], size_bytes=item["size_bytes"])
        data = LandingZone(settings.landing_uri).read(landed)
        if sha256_bytes(data) != item["batch_hash"]:
            # The file was replaced after collect: its new content is a new batch for the next run.
            log.warning("%s changed since it was collected; leaving it for the next run", item["name"])
            continue
        passed, reason, details, n_images = judge_bytes(data, item["name"], settings)
        if passed:
            stored = store_accepted(data, item["batch_hash"], settings.accepted_dir)
            ledger.decide(
                item["batch_hash"], ACCEPTED, reason=None, details=details, n_images=n_images,
                stored_path=str(stored), run_id=run_id,
            )
            log.info("accepted %s: %d images", item["name"], n_images)
        else:
            folder = quarantine(data, item["batch_hash"], item["name"], reason or "refused", details,
                                settings.quarantine_dir)
            ledger.decide(
                item["batch_hash"], QUARANTINED, reason=reason, details=details, n_images=n_images,
                stored_path=str(folder), run_id=run_id,
            )
            log.warning("quarantined %s: %s (copy and reason.json in %s)", item["name"], reason, folder)
        report.data_docs = details.get("data_docs") or report.data_docs
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
    accepted = {r.batch_hash: r.stored_path for r in ledger.list(ACCEPTED) if r.stored_path}
    if accepted:
        snapshot = build_snapshot(accepted, settings.snapshots_dir)  # type: ignore[arg-type]
        report.snapshot_id = snapshot.snapshot_id
        report.snapshot_path = str(snapshot.path)
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
