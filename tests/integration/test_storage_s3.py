"""Storage by URL against a real S3 server process (moto's standalone server on 127.0.0.1, driven through s3fs
exactly as real S3 would be): land -> collect -> validate -> snapshot in s3://, the trainer's loader reading the
snapshot by URI in a process with nothing but the store's environment, a quarantine with its reason.json in the
bucket, and a half-written snapshot (members, no manifest) ignored and converged by a re-run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlcd.data.ledger import ACCEPTED, QUARANTINED, Ledger
from mlcd.storage import MANIFEST, Storage
from tests.badbatches import bad_batches, good_bytes

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BUCKET = "mlcd-it"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real moto S3 server process on a free 127.0.0.1 port, with one bucket."""
    from mlcd.mlflow_server import free_port

    server = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start (exit {proc.poll()})") from None
                time.sleep(0.3)
        import s3fs

        s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=endpoint,
                          skip_instance_cache=True).mkdir(BUCKET)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def s3_storage(s3_endpoint: str, mlcd_home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """MLCD_STORAGE_URL in the bucket (a fresh prefix per test), credentials from AWS_*, endpoint as an option."""
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLCD_STORAGE_OPTIONS", json.dumps({"endpoint_url": s3_endpoint}))
    url = f"s3://{BUCKET}/run-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLCD_STORAGE_URL", url)
    return url


def _pod_like_env(s3_endpoint: str, home: Path) -> dict[str, str]:
    """What a training pod has: the store's options and credentials, a fresh HOME, no MLCD_HOME or storage URL."""
    keep = {k: os.environ[k] for k in ("PATH", "LANG", "MLCD_DATA") if k in os.environ}
    return {**keep, **CREDENTIALS, "HOME": str(home), "PYTHONPATH": str(REPO / "include"),
            "MLCD_STORAGE_OPTIONS": json.dumps({"endpoint_url": s3_endpoint})}


def test_land_validate_snapshot_and_train_loader_read_by_s3_uri(s3_storage: str, s3_endpoint: str, mlcd_home: Path,
                                                                 tmp_path: Path, reference_data) -> None:  # type: ignore[no-untyped-def]
    from mlcd.data.intake import collect, validate
    from mlcd.data.landing import LandingZone
    from mlcd.settings import get_settings

    settings = get_settings()
    assert settings.landing_uri == f"{s3_storage}/landing"
    x, y = reference_data.x_train[:1000], reference_data.y_train[:1000]
    (tmp_path / "good.npz").write_bytes(good_bytes(x, y))
    (tmp_path / "truncated.npz").write_bytes(bad_batches(x[:100], y[:100])["truncated"][0])
    zone = LandingZone(settings.landing_uri)
    zone.land(tmp_path / "good.npz")
    zone.land(tmp_path / "truncated.npz")

    pending = collect()
    assert sorted(p["name"] for p in pending) == ["good.npz", "truncated.npz"]
    report = validate(pending, allow_partial=True)
    store = Storage(s3_storage)

    # Accepted: content-addressed in the bucket; the ledger records the s3:// location.
    good = next(r for r in Ledger(settings.ledger_path).list(ACCEPTED))
    assert good.stored_path == f"{s3_storage}/batches/{good.batch_hash}.npz"
    assert store.exists("batches", f"{good.batch_hash}.npz")
    # Quarantined: the copy and reason.json in the bucket.
    bad = next(r for r in Ledger(settings.ledger_path).list(QUARANTINED))
    reason = store.read_json("quarantine", bad.batch_hash, "reason.json")
    assert reason is not None and reason["name"] == "truncated.npz" and "not an .npz archive" in reason["reason"]
    assert store.exists("quarantine", bad.batch_hash, "truncated.npz")
    # The snapshot: members and a manifest naming them, published in the bucket; Data Docs uploaded.
    assert report.snapshot_uri == f"{s3_storage}/snapshots/{report.snapshot_id}"
    manifest = store.read_json("snapshots", str(report.snapshot_id), MANIFEST)
    assert manifest is not None and set(manifest["members"]) == {"train.npz", "val.npz", "test.npz"}
    assert store.exists("data_docs", "index.html") and report.data_docs == f"{s3_storage}/data_docs/index.html"
    # Nothing of it on the worker's disk: only its scratch and the ledger.
    assert not (mlcd_home / "snapshots").exists() and not (mlcd_home / "batches").exists()
    assert not (mlcd_home / "quarantine").exists()

    # The trainer's loader, in a process that has only what a pod has (no MLCD_HOME, empty cwd, fresh HOME).
    workdir = tmp_path / "pod"
    (workdir / "home").mkdir(parents=True)
    code = ("import json, sys; from mlcd.training.data import load_training_data as load; "
            "d = load(sys.argv[1]); print(json.dumps([d.snapshot_id, len(d.x_train), len(d.x_val)]))")
    out = subprocess.run([sys.executable, "-c", code, str(report.snapshot_uri)], cwd=workdir, capture_output=True,
                         text=True, env=_pod_like_env(s3_endpoint, workdir / "home"), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [report.snapshot_id, report.counts["train"],
                                                               report.counts["val"]]
    assert not (workdir / ".mlcd").exists()  # the loader wrote nothing locally


def test_half_written_snapshot_is_ignored_and_a_rerun_converges(s3_storage: str, mlcd_home: Path,
                                                                 reference_data) -> None:  # type: ignore[no-untyped-def]
    from mlcd.data.intake import collect, validate
    from mlcd.data.snapshot import read_snapshot
    from mlcd.training.data import SnapshotError, load_training_data

    store = Storage(s3_storage)
    x, y = reference_data.x_train[:800], reference_data.y_train[:800]
    store.write_bytes("landing/batch.npz", good_bytes(x, y))
    first = validate(collect())
    snapshot_id = str(first.snapshot_id)
    # A writer that died between its members and its manifest: members (one of them stale) but no manifest.
    store.fs.rm(f"{store.root}/snapshots/{snapshot_id}/{MANIFEST}")
    store.write_bytes(f"snapshots/{snapshot_id}/train.npz", b"half written")
    with pytest.raises(ValueError, match="not published"):
        read_snapshot(first.snapshot_uri)  # type: ignore[arg-type]
    with pytest.raises(SnapshotError, match="not published"):
        load_training_data(str(first.snapshot_uri))
    again = validate(collect())  # nothing new landed: the re-run rebuilds and publishes the same snapshot
    assert again.snapshot_id == snapshot_id and again.snapshot_uri == first.snapshot_uri
    data = load_training_data(str(again.snapshot_uri))
    assert len(data.x_train) == again.counts["train"] > 0
