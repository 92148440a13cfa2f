"""The storage layer (mlcd.storage) on file:// and memory://, and what is built on it: snapshots published with a
manifest last, quarantine with reason.json, intake writing to a storage URL, the trainer and the drift reference
reading by URI. memory:// is fsspec's in-process object store: no rename, whole-object writes, like S3."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from mlcd.data.batch import BatchError
from mlcd.data.landing import LandingZone, quarantine, sha256_bytes
from mlcd.data.snapshot import (
    build_snapshot,
    load_split,
    npz_bytes,
    read_snapshot,
    snapshot_id_for,
    write_arrays_snapshot,
)
from mlcd.settings import load_settings
from mlcd.storage import MANIFEST, Storage, StorageError, options_for, to_url
from tests.badbatches import good_bytes

pytestmark = pytest.mark.unit


@pytest.fixture(params=["file", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "file":
        return Storage(f"file://{tmp_path / 'store'}")
    return Storage(f"memory://mlcd-test-{uuid.uuid4().hex}")


def _arrays(reference_data, n: int = 600) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    return reference_data.x_train[:n], reference_data.y_train[:n].astype(np.int64)


def test_write_read_list_and_locations(store: Storage) -> None:
    assert store.listdir("nothing") == []
    assert store.read_json("nothing", "manifest.json") is None
    where = store.write_bytes("a/b.bin", b"payload")
    store.write_json("a/c.json", {"k": 1})
    assert store.read_bytes("a/b.bin", max_bytes=100) == b"payload"
    assert store.read_json("a", "c.json") == {"k": 1}
    assert store.listdir("a") == ["b.bin", "c.json"]
    assert store.exists("a", "b.bin") and not store.exists("a", "zzz")
    if store.local is not None:
        # Locally, what the ledger records stays the plain path it always was; tasks exchange the file:// URL.
        assert where == str(store.local / "a" / "b.bin") and Path(where).read_bytes() == b"payload"
        assert store.uri("a") == f"file://{store.local}/a"
        assert not [p for p in (store.local / "a").iterdir() if p.name.startswith(".")]  # no temp files left
    else:
        assert where == store.uri("a/b.bin") and where.startswith("memory://")


def test_reads_are_bounded(store: Storage) -> None:
    store.write_bytes("big", b"x" * 5000)
    assert len(store.read_bytes("big", max_bytes=5000)) == 5000
    with pytest.raises(StorageError, match="larger than 4,999 bytes"):
        store.read_bytes("big", max_bytes=4999)
    with pytest.raises(FileNotFoundError):
        store.read_bytes("absent", max_bytes=10)


def test_options_go_to_object_stores_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLCD_STORAGE_OPTIONS", '{"endpoint_url": "http://127.0.0.1:9"}')
    assert options_for("s3://bucket/x") == {"endpoint_url": "http://127.0.0.1:9"}
    assert options_for("/tmp/x") == {} and options_for("file:///tmp/x") == {} and options_for("memory://x") == {}
    monkeypatch.setenv("MLCD_STORAGE_OPTIONS", "[1, 2]")
    with pytest.raises(ValueError, match="MLCD_STORAGE_OPTIONS must be a JSON object"):
        options_for("s3://bucket/x")


def test_settings_default_is_the_home_folder_and_a_url_moves_everything(mlcd_home: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.storage_url == f"file://{mlcd_home.resolve()}"
    assert settings.landing_uri == str(mlcd_home.resolve() / "landing")  # today's layout, unchanged
    assert settings.snapshots_dir == mlcd_home.resolve() / "snapshots"
    monkeypatch.setenv("MLCD_STORAGE_URL", "s3://bucket/prefix/")
    monkeypatch.setenv("MLCD_STORAGE_OPTIONS", '{"endpoint_url": "http://127.0.0.1:9"}')
    settings = load_settings()
    assert settings.storage_url == "s3://bucket/prefix"
    assert settings.landing_uri == "s3://bucket/prefix/landing"
    assert settings.storage_options == {"endpoint_url": "http://127.0.0.1:9"}
    assert not settings.storage_is_local
    monkeypatch.setenv("MLCD_STORAGE_OPTIONS", "{not json")
    with pytest.raises(ValueError, match="MLCD_STORAGE_OPTIONS is not JSON"):
        load_settings()


def test_snapshot_bytes_are_deterministic(reference_data) -> None:  # type: ignore[no-untyped-def]
    x, y = _arrays(reference_data, 50)
    assert npz_bytes(x, y) == npz_bytes(x.copy(), y.copy())
    assert npz_bytes(x, y) != npz_bytes(x[:49], y[:49])


def test_snapshot_round_trips_with_a_manifest_of_its_members(store: Storage, reference_data) -> None:  # type: ignore[no-untyped-def]
    x, y = _arrays(reference_data)
    snap = write_arrays_snapshot(x, y, store.uri("snapshots"))
    assert snap.uri == store.uri("snapshots", snap.snapshot_id)
    again = read_snapshot(snap.uri)
    assert again.counts == snap.counts and sum(snap.counts.values()) == len(x)
    assert set(again.members) == {"train.npz", "val.npz", "test.npz"}
    ys = []
    for split in ("train", "val", "test"):
        raw = store.read_bytes("snapshots", snap.snapshot_id, f"{split}.npz", max_bytes=1 << 30)
        assert again.members[f"{split}.npz"] == {"size": len(raw), "sha256": sha256_bytes(raw)}
        sx, sy = load_split(snap.uri, split)  # type: ignore[arg-type]
        assert sx.dtype == np.uint8 and len(sx) == snap.counts[split]
        ys.append(sy)
    np.testing.assert_array_equal(np.sort(np.concatenate(ys)), np.sort(y))


def test_members_without_a_manifest_are_no_snapshot_and_a_rerun_converges(store: Storage, reference_data) -> None:  # type: ignore[no-untyped-def]
    x, y = _arrays(reference_data)
    digest = sha256_bytes(x.tobytes() + y.tobytes())
    snapshot_id = snapshot_id_for([digest])
    # A writer that died after its members and before its manifest (or a different, stale member).
    store.write_bytes(f"snapshots/{snapshot_id}/train.npz", b"half written")
    with pytest.raises(ValueError, match="not a readable snapshot"):
        read_snapshot(store.uri("snapshots", snapshot_id))
    snap = write_arrays_snapshot(x, y, store.uri("snapshots"))
    assert snap.snapshot_id == snapshot_id
    assert len(load_split(snap.uri, "train")[0]) == snap.counts["train"]  # the stale member was rewritten


def test_a_member_that_does_not_match_its_manifest_is_refused(reference_data) -> None:  # type: ignore[no-untyped-def]
    store = Storage(f"memory://mlcd-test-{uuid.uuid4().hex}")
    x, y = _arrays(reference_data)
    snap = write_arrays_snapshot(x, y, store.uri("snapshots"))
    other = npz_bytes(x[:10], y[:10])
    store.write_bytes(f"snapshots/{snap.snapshot_id}/val.npz", other)
    with pytest.raises(BatchError, match="larger than|does not match its manifest"):
        load_split(snap.uri, "val")
    store.write_bytes(f"snapshots/{snap.snapshot_id}/{MANIFEST}", b'{"snapshot_id": 1}')
    with pytest.raises(ValueError, match="bad field"):
        read_snapshot(snap.uri)


def test_build_snapshot_from_accepted_copies_in_an_object_store(reference_data) -> None:  # type: ignore[no-untyped-def]
    store = Storage(f"memory://mlcd-test-{uuid.uuid4().hex}")
    x, y = _arrays(reference_data)
    data = good_bytes(x, y)
    batch_hash = sha256_bytes(data)
    stored = store.write_bytes(f"batches/{batch_hash}.npz", data)
    snap = build_snapshot({batch_hash: stored}, store.uri("snapshots"))
    assert snap.batches == (batch_hash,) and sum(snap.counts.values()) == len(x)
    # A corrupted accepted copy (its bytes no longer hash to its name) is refused, not trained on.
    store.write_bytes(f"batches/{batch_hash}.npz", good_bytes(x[:10], y[:10]))
    store.remove(f"snapshots/{snap.snapshot_id}")
    with pytest.raises(BatchError, match="does not hash to its name"):
        build_snapshot({batch_hash: stored}, store.uri("snapshots"))


def test_quarantine_in_an_object_store_writes_the_copy_and_its_reason(store: Storage) -> None:
    data = b"bad bytes"
    folder = quarantine(data, sha256_bytes(data), "bad/name.npz", "not an .npz archive", {"stage": "structure"},
                        store.child("quarantine"))
    q = Storage(to_url(folder))
    assert q.read_bytes("bad_name.npz", max_bytes=100) == data
    reason = q.read_json("reason.json")
    assert reason is not None and reason["reason"] == "not an .npz archive"
    assert reason["batch_hash"] == sha256_bytes(data)


def test_landing_zone_on_an_object_store_sees_new_objects_at_once(reference_data) -> None:  # type: ignore[no-untyped-def]
    url = f"memory://mlcd-test-{uuid.uuid4().hex}/landing"
    zone = LandingZone(url)
    assert zone.list() == []
    Storage(url).write_bytes("one.npz", good_bytes(*_arrays(reference_data, 20)))
    listed = zone.list()
    assert [f.name for f in listed] == ["one.npz"] and listed[0].uri == f"{url}/one.npz"


def test_intake_on_a_storage_url_writes_nothing_but_scratch_to_home(mlcd_home: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   reference_data) -> None:  # type: ignore[no-untyped-def]
    from mlcd.data.intake import collect, validate
    from mlcd.training.data import load_training_data

    url = f"memory://mlcd-test-{uuid.uuid4().hex}"
    monkeypatch.setenv("MLCD_STORAGE_URL", url)
    store = Storage(url)
    x, y = _arrays(reference_data)
    store.write_bytes("landing/good.npz", good_bytes(x, y))
    report = validate(collect())
    assert [b["name"] for b in report.accepted] == ["good.npz"]
    assert report.snapshot_uri == f"{url}/snapshots/{report.snapshot_id}"
    assert report.snapshot_path == report.snapshot_uri  # no local path to hand out
    assert store.exists("batches", f"{report.accepted[0]['batch_hash']}.npz")
    assert store.exists("data_docs", "index.html")  # rendered locally, uploaded
    assert report.data_docs == f"{url}/data_docs/index.html"
    assert not (mlcd_home / "snapshots").exists() and not (mlcd_home / "batches").exists()
    data = load_training_data(report.snapshot_uri)  # the trainer's own loader, by URI
    assert data.snapshot_id == report.snapshot_id and len(data.x_train) == report.counts["train"]


def test_drift_reference_is_fitted_from_the_snapshot_in_storage(tmp_path: Path, reference_data) -> None:  # type: ignore[no-untyped-def]
    from mlcd.guard.signals import load_or_fit_reference

    url = f"memory://mlcd-test-{uuid.uuid4().hex}"
    x, y = _arrays(reference_data)
    snap = write_arrays_snapshot(x, y, f"{url}/snapshots")
    home = tmp_path / "gateway-home"  # the gateway's own volume: no snapshots on it
    reference = load_or_fit_reference(home, snap.snapshot_id, url)
    assert reference.n_reference == snap.counts["train"]
    assert reference.n_reference != len(reference_data.x_train)
