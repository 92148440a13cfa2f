"""Intake behaviour the branch tests did not pin down, found by the mutation run (bench/mutation.py, issue 18).

Each test names the behaviour it checks; a planted bug in :mod:`mlcd.data.intake` that changes it fails the test.
Real ledger, real landing zone on disk, real Great Expectations gate.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mlcd.data.intake import IntakeReport, QuarantinedBatchesError, collect, judge, scan, validate
from mlcd.data.ledger import ACCEPTED, LANDED, QUARANTINED, Ledger
from mlcd.settings import get_settings
from tests.badbatches import good_bytes

pytestmark = pytest.mark.unit

ITEM_KEYS = {"batch_hash", "name", "uri", "ref", "size_bytes", "mtime"}


@pytest.fixture
def landing(mlcd_home: Path) -> Path:
    folder = Path(get_settings().landing_uri)
    folder.mkdir(parents=True)
    return folder


@pytest.fixture(scope="module")
def good(reference_data) -> bytes:  # type: ignore[no-untyped-def]
    return good_bytes(reference_data.x_train[:600], reference_data.y_train[:600])


def _record(name: str):  # type: ignore[no-untyped-def]
    return next(r for r in Ledger(get_settings().ledger_path).list() if r.name == name)


def test_a_collected_batch_carries_the_documented_keys_and_only_a_refused_one_a_refusal(
    landing: Path, good: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    (landing / "good.npz").write_bytes(good)
    (landing / "big.npz").write_bytes(good + b"x" * 64)
    monkeypatch.setenv("MLCD_MAX_BATCH_BYTES", str(len(good) + 1))
    items = {item["name"]: item for item in collect()}
    assert set(items["good.npz"]) == ITEM_KEYS  # no "refused" key at all on a readable batch
    assert items["good.npz"]["size_bytes"] == len(good)
    assert set(items["big.npz"]) == ITEM_KEYS | {"refused"} and items["big.npz"]["refused"]


def test_a_file_refused_at_collect_is_quarantined_at_the_read_stage_with_no_images(
    landing: Path, good: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    (landing / "good.npz").write_bytes(good)
    (landing / "big.npz").write_bytes(good + b"x" * 64)
    monkeypatch.setenv("MLCD_MAX_BATCH_BYTES", str(len(good) + 1))
    report = validate(collect(), allow_partial=True)
    big = _record("big.npz")
    assert (big.state, big.n_images, big.details) == (QUARANTINED, 0, {"stage": "read"})
    assert big.stored_path and Path(big.stored_path).is_dir()  # the reason is kept in the quarantine folder
    assert [b["name"] for b in report.quarantined] == ["big.npz"]
    assert report.quarantined[0]["n_images"] == 0 and report.quarantined[0]["reason"] == big.reason


def test_a_file_that_grows_past_the_limit_after_collect_is_quarantined_at_the_read_stage_with_no_images(
    landing: Path, good: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    (landing / "anchor.npz").write_bytes(good)
    (landing / "grows.npz").write_bytes(good[: len(good) // 2])
    monkeypatch.setenv("MLCD_MAX_BATCH_BYTES", str(len(good) + 1))
    pending = collect()
    (landing / "grows.npz").write_bytes(good + b"x" * 64)  # over the limit when validate copies it
    report = validate(pending, allow_partial=True)
    grows = _record("grows.npz")
    assert (grows.state, grows.n_images, grows.details) == (QUARANTINED, 0, {"stage": "read"})
    assert [b["name"] for b in report.accepted] == ["anchor.npz"]


def test_judge_refuses_a_file_that_is_not_a_batch_at_the_structure_stage_with_no_images(mlcd_home: Path) -> None:
    passed, reason, details, n_images = judge(b"not an npz at all", "junk.npz", get_settings())
    assert passed is False and reason and "npz" in reason
    assert details == {"stage": "structure"} and n_images == 0


def test_an_accepted_batch_is_recorded_with_its_image_count_and_data_docs(landing: Path, good: bytes) -> None:
    (landing / "good.npz").write_bytes(good)
    report = validate(collect())
    record = _record("good.npz")
    assert (record.state, record.n_images, record.reason) == (ACCEPTED, 600, None)
    assert report.accepted == [{"batch_hash": record.batch_hash, "name": "good.npz", "n_images": 600, "reason": None}]
    assert report.quarantined == [] and report.left == []
    assert report.data_docs is not None and Path(report.data_docs).exists()


def test_validate_leaves_no_staged_copy_behind(landing: Path, good: bytes) -> None:
    (landing / "good.npz").write_bytes(good)
    (landing / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(QuarantinedBatchesError):
        validate(collect())
    staging = get_settings().home / "staging"
    assert not staging.exists() or list(staging.iterdir()) == []


def test_a_missing_suite_fails_the_run_before_any_verdict(
    landing: Path, good: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (landing / "good.npz").write_bytes(good)
    pending = collect()
    empty = tmp_path / "no-suites"
    empty.mkdir()
    monkeypatch.setenv("MLCD_EXPECTATIONS", str(empty))
    with pytest.raises(FileNotFoundError, match="expectation suite"):
        validate(pending)  # the deployment's error: raised, not recorded against the batch
    record = Ledger(get_settings().ledger_path).get(pending[0]["batch_hash"])
    assert record is not None and record.state == LANDED


def test_scan_reports_files_still_settling_and_files_already_judged(
    landing: Path, good: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    (landing / "good.npz").write_bytes(good)
    validate(collect())
    monkeypatch.setenv("MLCD_SETTLE_S", "30")
    (landing / "fresh.npz").write_bytes(good[:100])
    now = time.time()
    os.utime(landing / "good.npz", (now - 60, now - 60))  # settled long ago (same content: judged before)
    seen = scan(now=now)
    assert [s["name"] for s in seen.settling] == ["fresh.npz"] and "still settling" in seen.settling[0]["reason"]
    assert [k["name"] for k in seen.known] == ["good.npz"]
    assert seen.pending == []


def test_the_report_as_a_dict_and_its_summary_name_every_batch_and_the_snapshot(landing: Path, good: bytes) -> None:
    (landing / "good.npz").write_bytes(good)
    (landing / "bad.npz").write_bytes(b"garbage")
    report = validate(collect(), allow_partial=True)
    as_dict = report.as_dict()
    assert as_dict["snapshot_id"] == report.snapshot_id and as_dict["accepted"] == report.accepted
    lines = report.summary_lines()
    assert lines[0].startswith("accepted     good.npz (600 images")
    assert lines[1].startswith("quarantined  bad.npz")
    assert lines[-1] == f"snapshot     {report.snapshot_id} {report.counts} at {report.snapshot_uri or report.snapshot_path}"
    assert IntakeReport().summary_lines() == []


def test_a_file_replaced_after_collect_leaves_no_staged_copy_behind(landing: Path, good: bytes) -> None:
    (landing / "anchor.npz").write_bytes(good)
    (landing / "swapped.npz").write_bytes(good[: len(good) // 2] + good[: len(good) // 2])
    pending = collect()
    (landing / "swapped.npz").write_bytes(b"new content")  # its staged copy does not match what was collected
    report = validate(pending, allow_partial=True)
    assert [b["name"] for b in report.left] == ["swapped.npz"]
    staging = get_settings().home / "staging"
    assert not staging.exists() or list(staging.iterdir()) == []


def test_a_retry_does_not_read_a_batch_it_already_decided(landing: Path, good: bytes) -> None:
    (landing / "good.npz").write_bytes(good)
    pending = collect()
    first = validate(pending, run_id="run-1")
    (landing / "good.npz").unlink()  # tidied away after the verdict: a retry must not need it again
    second = validate(pending, run_id="run-1")
    assert second.left == [] and second.accepted == first.accepted
    assert second.snapshot_id == first.snapshot_id
