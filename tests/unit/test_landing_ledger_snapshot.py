from __future__ import annotations

import json

import numpy as np
import pytest

from mlcd.data.landing import LandingZone, quarantine, sha256_bytes
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
    folder = quarantine(data, sha256_bytes(data), "bad.npz", "not an .npz archive", {"stage": "structure"},
                        tmp_path / "q")
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
