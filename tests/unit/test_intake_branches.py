"""Every branch of intake's validate, each with a test that fails when the branch is broken (issue 18).

Real ledger, real landing zone on disk, real Great Expectations gate. Each test names the branch it guards; the
report of issue 18 lists the planted bugs these were checked against (the "file replaced after collect" check
removed, ``allow_partial`` ignored, ``NoTrainingDataError`` removed).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mlcd.data.intake import NoTrainingDataError, QuarantinedBatchesError, collect, validate
from mlcd.data.ledger import ACCEPTED, LANDED, QUARANTINED, Ledger
from mlcd.data.snapshot import read_snapshot, snapshot_id_for
from mlcd.settings import get_settings
from tests.badbatches import bad_batches, good_bytes

pytestmark = pytest.mark.unit


@pytest.fixture
def landing(mlcd_home: Path) -> Path:
    folder = Path(get_settings().landing_uri)
    folder.mkdir(parents=True)
    return folder


@pytest.fixture(scope="module")
def batches(reference_data):  # type: ignore[no-untyped-def]
    x, y = reference_data.x_train[:1200], reference_data.y_train[:1200]
    return {
        "good": good_bytes(x[:600], y[:600]),
        "other_good": good_bytes(x[600:], y[600:]),
        "truncated": bad_batches(x[:600], y[:600])["truncated"][0],
    }


def _states() -> dict[str, tuple[str, str | None]]:
    return {r.name: (r.state, r.reason) for r in Ledger(get_settings().ledger_path).list()}


def test_structural_quarantine_stops_the_run_after_recording_every_verdict(landing, batches) -> None:  # type: ignore[no-untyped-def]
    (landing / "good.npz").write_bytes(batches["good"])
    (landing / "truncated.npz").write_bytes(batches["truncated"])
    with pytest.raises(QuarantinedBatchesError) as err:
        validate(collect())
    assert "truncated.npz: not an .npz archive" in str(err.value)
    states = _states()
    assert states["good.npz"] == (ACCEPTED, None)
    assert states["truncated.npz"][0] == QUARANTINED
    record = next(r for r in Ledger(get_settings().ledger_path).list() if r.name == "truncated.npz")
    assert record.details == {"stage": "structure"}
    folder = get_settings().quarantine_dir / record.batch_hash
    assert (folder / "truncated.npz").read_bytes() == batches["truncated"]  # the copy, byte for byte
    assert (landing / "truncated.npz").read_bytes() == batches["truncated"]  # the original, untouched
    # The accepted batch is snapshotted even though the run stops: the next run trains on it.
    good_hash = next(r.batch_hash for r in Ledger(get_settings().ledger_path).list(ACCEPTED))
    assert read_snapshot(get_settings().snapshots_dir / snapshot_id_for([good_hash])).counts


def test_allow_partial_goes_on_with_the_accepted_batches(landing, batches) -> None:  # type: ignore[no-untyped-def]
    (landing / "good.npz").write_bytes(batches["good"])
    (landing / "truncated.npz").write_bytes(batches["truncated"])
    report = validate(collect(), allow_partial=True)
    assert [b["name"] for b in report.accepted] == ["good.npz"]
    assert [b["name"] for b in report.quarantined] == ["truncated.npz"]
    assert report.snapshot_id is not None and sum(report.counts.values()) == 600


def test_no_accepted_batch_ever_is_no_training_data(landing, batches) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NoTrainingDataError, match="no accepted batches yet"):
        validate(collect())  # an empty landing zone
    (landing / "truncated.npz").write_bytes(batches["truncated"])
    with pytest.raises(NoTrainingDataError, match="no accepted batches yet"):
        validate(collect(), allow_partial=True)  # only a refused batch, and the run was told to go on
    assert _states()["truncated.npz"][0] == QUARANTINED


def test_file_replaced_after_collect_is_left_for_the_next_run(landing, batches) -> None:  # type: ignore[no-untyped-def]
    (landing / "anchor.npz").write_bytes(batches["other_good"])
    (landing / "swapped.npz").write_bytes(batches["good"])
    pending = collect()
    swapped = next(p for p in pending if p["name"] == "swapped.npz")
    (landing / "swapped.npz").write_bytes(batches["truncated"])  # replaced between collect and validate
    report = validate(pending)
    ledger = Ledger(get_settings().ledger_path)
    record = ledger.get(swapped["batch_hash"])
    assert record is not None and record.state == LANDED  # no verdict on content that was never judged
    assert not (get_settings().accepted_dir / f"{swapped['batch_hash']}.npz").exists()
    assert not (get_settings().quarantine_dir / swapped["batch_hash"]).exists()
    assert [b["name"] for b in report.left] == ["swapped.npz"] and "changed since" in report.left[0]["reason"]
    assert [b["name"] for b in report.accepted] == ["anchor.npz"]
    # The next run sees the new content as a new batch and judges it.
    with pytest.raises(QuarantinedBatchesError, match="swapped.npz: not an .npz archive"):
        validate(collect())


def test_a_rerun_converges_without_judging_twice(landing, batches) -> None:  # type: ignore[no-untyped-def]
    (landing / "good.npz").write_bytes(batches["good"])
    pending = collect()
    first = validate(pending, run_id="run-1")
    second = validate(pending, run_id="run-2")  # a retry of the same task with the same input
    assert first.snapshot_id == second.snapshot_id
    record = Ledger(get_settings().ledger_path).get(pending[0]["batch_hash"])
    assert record is not None and record.run_id == "run-1"
    assert collect() == []  # nothing new once decided
