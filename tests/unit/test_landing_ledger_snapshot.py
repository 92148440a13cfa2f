from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mlcd.data.landing import LandingZone, quarantine, ref_of, sha256_bytes, uri_of
from mlcd.data.ledger import ACCEPTED, LANDED, QUARANTINED, Ledger
from mlcd.data.reference import digits_as_mnist
from mlcd.data.snapshot import build_snapshot, load_split, snapshot_id_for, split_of, write_arrays_snapshot

pytestmark = pytest.mark.unit


def test_landing_zone_identifies_by_content_and_never_overwrites(tmp_path) -> None:  # type: ignore[no-untyped-def]
    zone = LandingZone(str(tmp_path / "landing"))
    a = tmp_path / "a.npz"
    a.write_bytes(b"first")
    first = zone.land(a)
    again = zone.land(a)  # same name, same bytes: nothing new
    assert again.uri == first.uri
    a.write_bytes(b"second")
    renamed = zone.land(a)  # same name, other bytes: kept side by side
    assert renamed.uri != first.uri
    assert sorted(f.name for f in zone.list()) == sorted([first.name, renamed.name])
    assert (tmp_path / "landing" / first.name).read_bytes() == b"first"


def test_landing_zone_works_on_an_fsspec_url(tmp_path) -> None:  # type: ignore[no-untyped-def]
    zone = LandingZone("memory://mlcd-test-landing")
    src = tmp_path / "b.npz"
    src.write_bytes(b"payload")
    landed = zone.land(src)
    assert landed.uri.startswith("memory://")
    assert [f.name for f in zone.list()] == ["b.npz"]
    assert zone.read(zone.list()[0]) == b"payload"


def test_ledger_records_once_and_keeps_first_decision(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ledger = Ledger(tmp_path / "ledger.sqlite")
    assert ledger.see("h1", "a.npz", "/l/a.npz", 10) is True
    assert ledger.see("h1", "copy-of-a.npz", "/l/copy.npz", 10) is False  # same content, other name
    assert ledger.get("h1").state == LANDED  # type: ignore[union-attr]
    ledger.decide("h1", QUARANTINED, reason="labels outside 0-9", details={"stage": "expectations"})
    ledger.decide("h1", ACCEPTED, reason=None)  # a late second verdict does not overwrite
    record = ledger.get("h1")
    assert record is not None and record.state == QUARANTINED and record.reason == "labels outside 0-9"
    assert [r.batch_hash for r in ledger.list(QUARANTINED)] == ["h1"]
    with pytest.raises(ValueError):
        ledger.decide("h1", LANDED, reason=None)


def test_quarantine_copies_with_reason_and_leaves_source(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = b"bad bytes"
    folder = Path(quarantine(data, sha256_bytes(data), "bad.npz", "not an .npz archive", {"stage": "structure"},
                             tmp_path / "q"))
    assert (folder / "bad.npz").read_bytes() == data
    reason = json.loads((folder / "reason.json").read_text())
    assert reason["reason"] == "not an .npz archive" and reason["batch_hash"] == sha256_bytes(data)


def test_split_depends_on_image_bytes_only(reference_data) -> None:  # type: ignore[no-untyped-def]
    x = reference_data.x_train[:3000]
    codes = split_of(x)
    # Stable under reordering and under adding more data: the frozen test set never loses an image.
    perm = np.random.default_rng(1).permutation(len(x))
    np.testing.assert_array_equal(split_of(x[perm]), codes[perm])
    grown = split_of(np.concatenate([x, reference_data.x_train[3000:4000]]))
    np.testing.assert_array_equal(grown[:3000], codes)
    shares = np.bincount(codes, minlength=3) / len(codes)
    assert 0.76 < shares[0] < 0.84 and 0.07 < shares[1] < 0.13 and 0.07 < shares[2] < 0.13


def test_snapshot_is_versioned_by_batches_and_idempotent(tmp_path, reference_data) -> None:  # type: ignore[no-untyped-def]
    from mlcd.data.batch import save_batch

    x, y = reference_data.x_train, reference_data.y_train
    a = save_batch(tmp_path / "a.npz", x[:500], y[:500])
    b = save_batch(tmp_path / "b.npz", x[500:900], y[500:900])
    one = build_snapshot({"ha": a}, tmp_path / "snaps")
    two = build_snapshot({"ha": a, "hb": b}, tmp_path / "snaps")
    assert one.snapshot_id != two.snapshot_id
    assert build_snapshot({"hb": b, "ha": a}, tmp_path / "snaps").snapshot_id == two.snapshot_id
    assert sum(two.counts.values()) == 900
    test_one = {r.tobytes() for r in load_split(one.path, "test")[0]}
    test_two = {r.tobytes() for r in load_split(two.path, "test")[0]}
    assert test_one <= test_two  # the test set only grows
    assert snapshot_id_for(["hb", "ha"]) == two.snapshot_id


def test_arrays_snapshot_round_trips(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ref = digits_as_mnist()
    snap = write_arrays_snapshot(ref.x_train, ref.y_train, tmp_path)
    xs, ys = zip(*(load_split(snap.path, s) for s in ("train", "val", "test")), strict=True)
    assert sum(len(v) for v in xs) == len(ref.x_train)
    assert all(v.dtype == np.uint8 and v.shape[1:] == (28, 28) for v in xs)
    assert sorted(np.concatenate(ys).tolist()) == sorted(ref.y_train.tolist())


def test_digits_fallback_looks_like_mnist() -> None:
    ref = digits_as_mnist()
    assert ref.x_train.dtype == np.uint8 and ref.x_train.shape[1:] == (28, 28)
    assert ref.x_train.max() == 255 and set(np.unique(ref.y_train)) == set(range(10))
    assert len(ref.x_train) + len(ref.x_test) == 1797


# --- Crash-safe snapshots: a full disk or a killed writer leaves nothing half-built, and a re-run converges ---

_BUILD_CHILD = """
import resource, signal, sys
import numpy as np
from mlcd.data.snapshot import write_arrays_snapshot
limit, ignore = int(sys.argv[2]), sys.argv[3] == "ignore"
# Ignored (Python's default): writes past the limit fail with EFBIG, as on a full disk.
# Default action: the kernel kills the writer mid-write, as a power cut or an OOM kill would.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN if ignore else signal.SIG_DFL)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
data = np.load(sys.argv[4])
write_arrays_snapshot(data["x"], data["y"], sys.argv[1])
"""


@pytest.mark.parametrize("failure", ["disk_full", "killed"])
def test_interrupted_snapshot_leaves_no_staging_and_a_rerun_converges(tmp_path, reference_data, failure) -> None:  # type: ignore[no-untyped-def]
    x, y = reference_data.x_train[:2000], reference_data.y_train[:2000]
    arrays = tmp_path / "arrays.npz"
    np.savez(arrays, x=x, y=y)
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    child = subprocess.run(
        [sys.executable, "-c", _BUILD_CHILD, str(snaps), str(200_000), "ignore" if failure == "disk_full" else "kill",
         str(arrays)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert child.returncode != 0  # train.npz (1.25 MB) cannot be written under a 200 kB limit
    if failure == "disk_full":
        assert "File too large" in child.stderr
        assert list(snaps.iterdir()) == []  # the failing writer removed its staging folder itself
    else:
        assert child.returncode == -signal.SIGXFSZ
        left = list(snaps.iterdir())  # killed outright: its staging folder is left, never a published snapshot
        assert len(left) == 1 and left[0].name.endswith(".staging") and not (left[0] / "manifest.json").exists()
    snap = write_arrays_snapshot(x, y, snaps)  # the re-run
    assert [p.name for p in snaps.iterdir()] == [snap.snapshot_id]  # the dead writer's staging was removed
    assert sum(snap.counts.values()) == 2000
    assert json.loads((snap.path / "manifest.json").read_text())["counts"] == snap.counts
    np.testing.assert_array_equal(np.sort(np.concatenate([load_split(snap.path, s)[1] for s in ("train", "val", "test")])),
                                  np.sort(y))


def test_a_live_writers_staging_is_never_removed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from mlcd.files import clean_stale_staging, staging_tag

    mine = tmp_path / f".abc.{staging_tag()}.staging"
    mine.mkdir()
    host = staging_tag().rsplit(".", 1)[0]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = tmp_path / f".abc.{host}.{int(dead.stdout)}.staging"
    gone.mkdir()
    assert clean_stale_staging(tmp_path) == [gone]
    assert mine.is_dir()


# --- Names that are not UTF-8, and the stat-only watcher ---


def test_ledger_stores_undecodable_and_multiline_names_as_one_printable_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ledger = Ledger(tmp_path / "ledger.sqlite")
    raw = os.fsdecode(b"batch-\xff\xfe.npz")  # how Python hands over a name that is not UTF-8
    assert ledger.see("h1", raw, f"/landing/{raw}", 10)
    assert ledger.see("h2", "two\nlines.npz", "/landing/two\nlines.npz", 10)
    names = {r.batch_hash: r.name for r in ledger.list()}
    assert names == {"h1": "batch-\\xff\\xfe.npz", "h2": "two\\nlines.npz"}
    assert ref_of(f"/landing/{raw}").isascii() and uri_of(ref_of(f"/landing/{raw}")) == f"/landing/{raw}"


def test_watcher_lists_by_stat_and_waits_for_files_to_settle(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from mlcd.airflow.landing import find_unseen_batches

    landing = tmp_path / "landing"
    landing.mkdir()
    ledger_path = str(tmp_path / "ledger.sqlite")
    growing = landing / "growing.npz"
    growing.write_bytes(b"half a batch")  # mtime now: still being copied in
    assert find_unseen_batches(str(landing), ledger_path, {}, settle_s=30) == []
    old = time.time() - 60
    os.utime(growing, (old, old))  # unchanged for a minute: settled
    known: dict[str, str] = {}
    found = find_unseen_batches(str(landing), ledger_path, known, settle_s=30)
    assert [f["batch_hash"] for f in found] == [sha256_bytes(b"half a batch")]
    # Rewrite the content behind the watcher's back, keeping size and mtime: a poll that re-read content would
    # see the new hash; a stat-listing watcher (memory cache, then the ledger's sightings) does not read it again.
    stat = growing.stat()
    growing.write_bytes(b"HALF A BATCH")
    os.utime(growing, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert [f["batch_hash"] for f in find_unseen_batches(str(landing), ledger_path, known, settle_s=30)] == [
        sha256_bytes(b"half a batch")]
    assert [f["batch_hash"] for f in find_unseen_batches(str(landing), ledger_path, {}, settle_s=30)] == [
        sha256_bytes(b"half a batch")]


def test_watcher_reports_unreadable_files_and_odd_names_without_failing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from mlcd.airflow.landing import find_unseen_batches

    landing = tmp_path / "landing"
    landing.mkdir()
    os.mkfifo(landing / "pipe.npz")  # reading it would block the triggerer forever
    (landing / "dangling.npz").symlink_to(landing / "nowhere")
    fd = os.open(os.path.join(os.fsencode(landing), b"odd-\xff.npz"), os.O_WRONLY | os.O_CREAT)
    os.write(fd, b"bytes")
    os.close(fd)
    found = {f["name"]: f["batch_hash"] for f in find_unseen_batches(str(landing), str(tmp_path / "l.sqlite"), settle_s=0)}
    assert set(found) == {"pipe.npz", "dangling.npz", "odd-\\xff.npz"}
    assert found["odd-\\xff.npz"] == sha256_bytes(b"bytes")
    assert found["pipe.npz"].startswith("stat-") and found["dangling.npz"].startswith("stat-")
