"""A landing zone full of hostile files next to good batches: each refused with one line, the good ones accepted.

Crafted files of each kind from issue 14: a tiny file whose header declares billions of images, a zip bomb of
about 1 MB that inflates to 1.25 GB, a name that is not UTF-8 (and one with a newline), a FIFO and a dangling
link named ``*.npz``, and a file still being copied in. Real landing zone on disk, real ledger, real GX gate; the
memory bound on the validating process is measured in tests/integration/test_intake_memory.py.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlcd.cli import cli
from mlcd.data.intake import scan, validate
from mlcd.data.ledger import ACCEPTED, QUARANTINED, Ledger
from mlcd.settings import get_settings
from tests.badbatches import bad_batches, billions_of_images, good_bytes, zip_bomb

pytestmark = pytest.mark.unit

ODD_NAME = b"caf\xe9-latin1-\xff.npz"  # Latin-1 bytes: not UTF-8
ODD_SHOWN = "caf\\xe9-latin1-\\xff.npz"


@pytest.fixture(scope="module")
def data(reference_data):  # type: ignore[no-untyped-def]
    x, y = reference_data.x_train[:2400], reference_data.y_train[:2400]
    return {
        "good": good_bytes(x[:600], y[:600]),
        "odd": good_bytes(x[600:1200], y[600:1200]),
        "late": good_bytes(x[1200:1800], y[1200:1800]),
        "labels": bad_batches(x[1800:], y[1800:])["labels_out_of_range"][0],
        "billions": billions_of_images(),
        "bomb": zip_bomb(1_250_000_000),
    }


def _write(folder: Path, name: str | bytes, payload: bytes, *, settled: bool = True) -> None:
    path = os.path.join(os.fsencode(folder), name if isinstance(name, bytes) else name.encode())
    with open(path, "wb") as fh:
        fh.write(payload)
    if settled:
        past = time.time() - 120
        os.utime(path, (past, past))


@pytest.fixture
def hostile_zone(mlcd_home: Path, data, monkeypatch: pytest.MonkeyPatch) -> Path:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MLCD_SETTLE_S", "30")
    landing = Path(get_settings().landing_uri)
    landing.mkdir(parents=True)
    _write(landing, "good.npz", data["good"])
    _write(landing, ODD_NAME, data["odd"])
    _write(landing, "two\nlines.npz", data["labels"])
    _write(landing, "billions.npz", data["billions"])
    _write(landing, "bomb.npz", data["bomb"])
    os.mkfifo(landing / "pipe.npz")
    os.utime(landing / "pipe.npz", (time.time() - 120, time.time() - 120))
    (landing / "dangling.npz").symlink_to(landing / "gone.npz")
    os.utime(landing / "dangling.npz", (time.time() - 120, time.time() - 120), follow_symlinks=False)
    _write(landing, "late.npz", data["late"][:5000], settled=False)  # still being copied in
    return landing


def _snapshot_of(landing: Path) -> dict[bytes, tuple[bytes, int]]:
    out = {}
    for entry in os.scandir(os.fsencode(landing)):
        st = entry.stat(follow_symlinks=False)
        content = b"" if not entry.is_file(follow_symlinks=False) else Path(os.fsdecode(entry.path)).read_bytes()
        out[entry.name] = (content, st.st_mtime_ns)
    return out


def test_hostile_files_are_refused_one_by_one_and_the_good_batches_accepted(hostile_zone, data) -> None:  # type: ignore[no-untyped-def]
    before = _snapshot_of(hostile_zone)
    seen = scan()
    assert [s["name"] for s in seen.settling] == ["late.npz"]
    report = validate(seen.pending, allow_partial=True)  # no exception from any one file reaches the caller

    assert sorted(b["name"] for b in report.accepted) == sorted([ODD_SHOWN, "good.npz"])
    reasons = {b["name"]: b["reason"] for b in report.quarantined}
    expected = {
        "billions.npz": "x declares 3,000,000,000 images",
        "bomb.npz": "member x.npy inflates to 1,249,999,536 bytes",
        "pipe.npz": "not a regular file",
        "dangling.npz": "not a regular file",
        "two\\nlines.npz": "labels outside 0-9",
    }
    assert set(reasons) == set(expected)
    for name, phrase in expected.items():
        assert phrase in reasons[name], (name, reasons[name])
        assert "\n" not in reasons[name] and "Traceback" not in reasons[name]
    assert sum(report.counts.values()) == 1200  # the snapshot holds exactly the two good batches

    ledger = {r.name: r for r in Ledger(get_settings().ledger_path).list()}
    assert "late.npz" not in ledger  # not taken before it settled
    assert ledger[ODD_SHOWN].state == ACCEPTED and ledger[ODD_SHOWN].source_uri.endswith(ODD_SHOWN)
    quarantine = get_settings().quarantine_dir
    bomb = ledger["bomb.npz"]
    assert bomb.state == QUARANTINED
    assert (quarantine / bomb.batch_hash / "bomb.npz").read_bytes() == data["bomb"]  # refused copy kept for a look
    assert json.loads((quarantine / bomb.batch_hash / "reason.json").read_text())["reason"] == bomb.reason
    assert json.loads((quarantine / ledger["pipe.npz"].batch_hash / "reason.json").read_text())["name"] == "pipe.npz"
    assert _snapshot_of(hostile_zone) == before  # nothing in the landing zone was touched, not even an mtime
    assert not list((get_settings().home / "staging").iterdir())  # no private copy left behind

    # The copy finishes and settles: the next run takes it, and judges nothing twice.
    _write(hostile_zone, "late.npz", data["late"])
    again = validate(scan().pending, allow_partial=True)
    assert [b["name"] for b in again.accepted] == ["late.npz"] and again.quarantined == []
    assert sum(again.counts.values()) == 1800


def test_mlcd_intake_prints_one_line_per_file_and_exits_1_on_quarantine(hostile_zone) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    first = runner.invoke(cli, ["intake"])
    assert first.exit_code == 1, first.output
    lines = first.output.strip().splitlines()
    assert lines[0] == "settling     late.npz: still settling (changed less than 30 s ago)"
    by_name = {line.split()[1].rstrip(":"): line for line in lines if not line.startswith("snapshot")}
    assert set(by_name) == {"late.npz", "good.npz", ODD_SHOWN, "billions.npz", "bomb.npz", "pipe.npz",
                            "dangling.npz", "two\\nlines.npz"}
    assert by_name["good.npz"].startswith("accepted     good.npz (600 images")
    assert by_name["bomb.npz"].startswith("quarantined  bomb.npz (")
    assert lines[-1].startswith("snapshot ")
    second = runner.invoke(cli, ["intake"])  # nothing new: each file is reported as judged before
    assert second.exit_code == 0, second.output
    assert "known        good.npz" in second.output and "quarantined" not in second.output


def test_a_failure_of_mlcds_own_storage_leaves_the_batch_undecided_and_goes_on(mlcd_home, data) -> None:  # type: ignore[no-untyped-def]
    landing = Path(get_settings().landing_uri)
    landing.mkdir(parents=True)
    _write(landing, "good.npz", data["good"])
    _write(landing, "labels.npz", data["labels"])
    get_settings().quarantine_dir.write_text("not a folder")  # quarantining anything now fails on our side
    report = validate(scan().pending)
    assert [b["name"] for b in report.accepted] == ["good.npz"]
    assert [b["name"] for b in report.left] == ["labels.npz"] and "will be retried" in report.left[0]["reason"]
    states = {r.name: r.state for r in Ledger(get_settings().ledger_path).list()}
    assert states == {"good.npz": ACCEPTED, "labels.npz": "landed"}  # no verdict recorded for a storage failure
