"""Stateless prediction ids (what a label needs, signed and unreadable) and the shared once-only label ledger."""

from __future__ import annotations

import base64
import threading
from pathlib import Path

import pytest

from mlcd.serving.feedback import LabelLedger, LabelRefused, PredictionIds, Refusal, take_label

pytestmark = pytest.mark.unit

SECRET = "unit-shared-secret-0123456789"


def test_an_id_carries_the_prediction_and_any_replica_with_the_secret_reads_it() -> None:
    pid = PredictionIds(SECRET).issue("mnist-cnn", "7", "canary", 3, now=1000.0)
    got = PredictionIds(SECRET).read(pid)  # another process, the same secret
    assert (got.model, got.version, got.variant, got.predicted) == ("mnist-cnn", "7", "canary", 3)
    assert got.expires_at == 1000.0 + PredictionIds(SECRET).ttl_s
    assert pid.count(".") == 1 and len(pid) < 120


def test_the_id_does_not_tell_a_client_which_variant_served_it() -> None:
    ids = PredictionIds(SECRET)
    body = base64.urlsafe_b64decode(ids.issue("m", "7", "canary", 3).split(".")[0] + "==")
    assert b"canary" not in body and b'"7"' not in body
    # Two ids of the same prediction differ (fresh nonce): nothing to correlate either.
    assert ids.issue("m", "7", "canary", 3, now=1.0) != ids.issue("m", "7", "canary", 3, now=1.0)


@pytest.mark.parametrize("mutate", [
    lambda p: p[:-1] + ("0" if p[-1] != "0" else "1"),  # the signature
    lambda p: ("A" if p[0] != "A" else "B") + p[1:],  # the nonce
    lambda p: p.split(".")[0][:-2] + "AA." + p.split(".")[1],  # the encrypted class
    lambda p: p.split(".")[0],  # no signature
    lambda p: "0" * 32,
    lambda p: "%%%." + "0" * 32,
], ids=["mac", "nonce", "payload", "unsigned", "uuid-shape", "not-base64"])
def test_a_changed_or_made_up_id_is_refused_as_a_bad_signature(mutate: object) -> None:
    ids = PredictionIds(SECRET)
    bad = mutate(ids.issue("m", "1", "stable", 4))  # type: ignore[operator]
    with pytest.raises(LabelRefused) as info:
        ids.read(bad)
    assert info.value.reason is Refusal.BAD_SIGNATURE and info.value.status == 403


def test_another_secret_or_no_secret_reads_nothing() -> None:
    pid = PredictionIds(SECRET).issue("m", "1", "stable", 4)
    for other in (PredictionIds("another-secret-0123456789"), PredictionIds(None)):
        with pytest.raises(LabelRefused, match="bad signature"):
            other.read(pid)


def test_a_label_is_taken_once_across_ledgers_on_one_database(tmp_path: Path) -> None:
    url = str(tmp_path / "ledger.sqlite")
    ids = PredictionIds(SECRET, ttl_s=60)
    pid = ids.issue("m", "2", "canary", 5, now=100.0)
    first, restarted = LabelLedger(url), LabelLedger(url)  # two replicas, or one before and after a restart
    assert take_label(ids, first, "m", pid, now=110.0).variant == "canary"
    with pytest.raises(LabelRefused) as info:
        take_label(ids, restarted, "m", pid, now=111.0)
    assert info.value.reason is Refusal.ALREADY_LABELLED and info.value.status == 409


def test_concurrent_labels_of_one_id_count_once(tmp_path: Path) -> None:
    url = str(tmp_path / "ledger.sqlite")
    ids = PredictionIds(SECRET)
    pid = ids.issue("m", "2", "stable", 5)
    ledgers = [LabelLedger(url) for _ in range(8)]
    results: list[str] = []
    barrier = threading.Barrier(len(ledgers))

    def label(ledger: LabelLedger) -> None:
        barrier.wait()
        try:
            take_label(ids, ledger, "m", pid)
            results.append("taken")
        except LabelRefused as exc:
            results.append(exc.reason.value)

    threads = [threading.Thread(target=label, args=(ledger,)) for ledger in ledgers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["already_labelled"] * 7 + ["taken"]


def test_expired_and_other_model_ids_are_refused_before_the_database(tmp_path: Path) -> None:
    ids = PredictionIds(SECRET, ttl_s=10)
    ledger = LabelLedger(str(tmp_path / "never.sqlite"))
    with pytest.raises(LabelRefused) as info:
        take_label(ids, ledger, "m", ids.issue("m", "1", "stable", 1, now=0.0), now=11.0)
    assert info.value.reason is Refusal.EXPIRED and info.value.status == 404
    with pytest.raises(LabelRefused) as info:
        take_label(ids, ledger, "penguins", ids.issue("m", "1", "stable", 1))
    assert info.value.reason is Refusal.OTHER_MODEL and info.value.status == 422
    assert not (tmp_path / "never.sqlite").exists()  # cheap checks first: nothing was written


def test_expired_rows_are_purged(tmp_path: Path) -> None:
    ids = PredictionIds(SECRET, ttl_s=10)
    ledger = LabelLedger(str(tmp_path / "ledger.sqlite"))
    take_label(ids, ledger, "m", ids.issue("m", "1", "stable", 1, now=0.0), now=5.0)
    take_label(ids, ledger, "m", ids.issue("m", "1", "stable", 1, now=20.0), now=21.0)
    assert ledger.purge(now=15.0) == 1 and ledger.purge(now=15.0) == 0
