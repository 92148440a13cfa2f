"""Real Great Expectations on real MNIST and on every bad input; the CLI as a user runs it."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mlcd.cli import cli
from mlcd.data.batch import Batch
from mlcd.data.intake import QuarantinedBatchesError, collect, validate
from mlcd.data.ledger import Ledger
from mlcd.settings import get_settings
from mlcd.validation.gate import get_gate
from tests.badbatches import bad_batches, good_bytes

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sample(reference_data):  # type: ignore[no-untyped-def]
    return reference_data.x_train[:1000], reference_data.y_train[:1000]


@pytest.fixture(scope="module")
def gate(tmp_path_factory):  # type: ignore[no-untyped-def]
    return get_gate(get_settings().expectations_dir, data_docs_dir=tmp_path_factory.mktemp("docs"))


def test_real_mnist_passes_and_writes_data_docs(gate, reference_data) -> None:  # type: ignore[no-untyped-def]
    outcome = gate.validate(Batch(reference_data.x_test, reference_data.y_test))
    assert outcome.passed, outcome.reason
    assert outcome.n_images == len(reference_data.x_test)
    assert Path(outcome.data_docs).exists()


def test_scikit_learn_fallback_digits_pass_the_same_suite(gate) -> None:  # type: ignore[no-untyped-def]
    from mlcd.data.reference import digits_as_mnist

    ref = digits_as_mnist()
    outcome = gate.validate(Batch(ref.x_train, ref.y_train))
    assert outcome.passed, outcome.reason


def test_every_bad_input_is_refused_by_the_cli_with_exit_1(tmp_path, sample) -> None:  # type: ignore[no-untyped-def]
    files = {}
    for name, (data, phrase) in bad_batches(*sample).items():
        path = tmp_path / f"{name}.npz"
        path.write_bytes(data)
        files[name] = (path, hashlib.sha256(data).hexdigest(), phrase)
    runner = CliRunner()
    for name, (path, digest, phrase) in files.items():
        result = runner.invoke(cli, ["validate", str(path)])
        assert result.exit_code == 1, (name, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("FAIL"), (name, result.output)
        assert phrase in lines[0], (name, lines[0])
        assert "Traceback" not in result.output
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest  # the original is untouched


def test_cli_exit_codes_for_pass_mixed_and_usage(tmp_path, sample) -> None:  # type: ignore[no-untyped-def]
    good = tmp_path / "good.npz"
    good.write_bytes(good_bytes(*sample))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"nope")
    mlcd = [sys.executable, "-m", "mlcd.cli.__main__"]
    ok = subprocess.run([*mlcd, "validate", str(good)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "PASS" in ok.stdout
    mixed = subprocess.run([*mlcd, "validate", "--json", str(good), str(bad)], capture_output=True, text=True,
                           timeout=120)
    assert mixed.returncode == 1
    verdicts = [json.loads(line) for line in mixed.stdout.splitlines()]
    assert [v["passed"] for v in verdicts] == [True, False]
    usage = subprocess.run([*mlcd, "validate", str(tmp_path / "absent.npz")], capture_output=True, text=True,
                           timeout=120)
    assert usage.returncode == 2 and "does not exist" in usage.stderr


def test_intake_accepts_good_quarantines_bad_and_converges(mlcd_home, tmp_path, sample) -> None:  # type: ignore[no-untyped-def]
    x, y = sample
    settings = get_settings()
    landing = Path(settings.landing_uri)
    landing.mkdir(parents=True)
    (landing / "good.npz").write_bytes(good_bytes(x[:500], y[:500]))
    inverted, _ = bad_batches(x, y)["inverted"]
    (landing / "inverted.npz").write_bytes(inverted)
    before = {p.name: p.read_bytes() for p in landing.iterdir()}

    pending = collect()
    assert sorted(p["name"] for p in pending) == ["good.npz", "inverted.npz"]
    with pytest.raises(QuarantinedBatchesError, match="inverted.npz: images look blank or inverted"):
        validate(pending, run_id="run-1")
    ledger = Ledger(settings.ledger_path)
    states = {r.name: r.state for r in ledger.list()}
    assert states == {"good.npz": "accepted", "inverted.npz": "quarantined"}
    reason = json.loads(next(settings.quarantine_dir.glob("*/reason.json")).read_text())
    assert reason["name"] == "inverted.npz" and "inverted" in reason["reason"]
    assert {p.name: p.read_bytes() for p in landing.iterdir()} == before  # nothing landed was touched

    # A re-run finds nothing new, judges nothing twice and trains on what was accepted.
    assert collect() == []
    report = validate([], run_id="run-2")
    assert report.snapshot_id and sum(report.counts.values()) == 500
    assert len(ledger.list()) == 2

    # A new good batch changes the snapshot version; the earlier test images stay test images.
    (landing / "more.npz").write_bytes(good_bytes(x[500:], y[500:]))
    grown = validate(collect(), run_id="run-3")
    assert grown.snapshot_id != report.snapshot_id
    old_test = np.load(Path(report.snapshot_path) / "test.npz")["x"]
    new_test = np.load(Path(grown.snapshot_path) / "test.npz")["x"]
    assert {r.tobytes() for r in old_test} <= {r.tobytes() for r in new_test}
