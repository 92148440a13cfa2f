"""dag.test() of the intake half of mlcd_retrain and of the landing watcher, on the embedded default."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlcd.data.ledger import Ledger
from mlcd.settings import get_settings
from tests.badbatches import bad_batches, good_bytes

pytestmark = pytest.mark.dags


def _states(run) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def test_landing_watch_emits_the_asset_and_records_the_batch(dagbag, mlcd_home, reference_data) -> None:  # type: ignore[no-untyped-def]
    landing = Path(get_settings().landing_uri)
    landing.mkdir(parents=True)
    (landing / "b1.npz").write_bytes(good_bytes(reference_data.x_train[:300], reference_data.y_train[:300]))
    run = dagbag.get_dag("mlcd_landing_watch").test()
    assert str(run.state) == "success"
    assert [r.state for r in Ledger(get_settings().ledger_path).list()] == ["landed"]


def test_retrain_stops_at_validate_when_a_batch_is_quarantined(dagbag, mlcd_home, reference_data) -> None:  # type: ignore[no-untyped-def]
    x, y = reference_data.x_train[:600], reference_data.y_train[:600]
    landing = Path(get_settings().landing_uri)
    landing.mkdir(parents=True)
    (landing / "good.npz").write_bytes(good_bytes(x, y))
    (landing / "labels.npz").write_bytes(bad_batches(x, y)["labels_out_of_range"][0])
    dag = dagbag.get_dag("mlcd_retrain")

    first = dag.test()
    # A quarantine is a correct refusal (mlcd.airflow.refusals): the run succeeds with validate skipped.
    assert str(first.state) == "success"
    assert _states(first)["validate"] == "skipped"
    ledger = {r.name: (r.state, r.reason) for r in Ledger(get_settings().ledger_path).list()}
    assert ledger["good.npz"][0] == "accepted"
    assert ledger["labels.npz"][0] == "quarantined" and "labels outside 0-9" in ledger["labels.npz"][1]
    # Nothing after validate ran: a quarantine never reaches training.
    assert {k: v for k, v in _states(first).items() if k not in ("collect", "validate")} == {
        "unchanged": "skipped", "train": "skipped", "evaluate": "skipped",
        "register": "skipped", "canary": "skipped", "announce_canary": "skipped"}
