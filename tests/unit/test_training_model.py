"""The model contract, the command both backends run, the result line, and snapshot checks (real Keras, tiny)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from mlcd.training.contract import (
    ERROR_PREFIX,
    REQUIRED_RESULT_KEYS,
    RESULT_PREFIX,
    format_result_line,
    last_error_line,
    parse_result,
    trainer_args,
    trainer_command,
)

pytestmark = pytest.mark.unit

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _result(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {key: "x" for key in REQUIRED_RESULT_KEYS}
    base.update(run_id="abc", val_accuracy=0.9, val_loss=0.3, epochs_run=1)
    base.update(changes)
    return base


# --- the model contract -------------------------------------------------------------------------------------


def test_reference_cnn_keeps_the_model_contract() -> None:
    import keras

    from mlcd.model_io import NUM_CLASSES
    from mlcd.training.model import ReferenceCNN

    model = ReferenceCNN().build()
    assert model.input_shape == (None, 28, 28)
    assert model.output_shape == (None, NUM_CLASSES)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == [
        "Rescaling", "Reshape", "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dense",
    ]  # fmt: skip
    assert model.layers[-1].activation is keras.activations.linear  # logits, not probabilities
    assert model.loss.get_config()["from_logits"] is True
    assert type(model.optimizer).__name__ == "Adam"

    # Raw 0–255 pixels in, float32 logits out: scaling lives inside the model.
    x = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28)).astype(np.float32)
    out = np.asarray(model(x, training=False))
    assert out.shape == (3, NUM_CLASSES) and out.dtype == np.float32
    assert float(model.layers[0](np.full((1, 28, 28), 255.0, np.float32)).numpy().max()) == pytest.approx(1.0)


def test_mixed_precision_model_is_logged_as_float32() -> None:
    import keras

    from mlcd.training.model import ReferenceCNN, as_float32

    builder = ReferenceCNN()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        mixed = builder.build()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert mixed.layers[2].compute_dtype == "float16"
    assert mixed.layers[-1].compute_dtype == "float32"  # logits stay float32 even while training in float16
    plain = as_float32(mixed, builder)
    assert all(layer.compute_dtype == "float32" for layer in plain.layers)
    x = np.random.default_rng(1).integers(0, 256, size=(2, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(plain(x)), np.asarray(mixed(x)), atol=5e-2)


def test_model_plugin_point() -> None:
    from mlcd.training.model import ModelBuilder, ReferenceCNN, get_builder

    assert isinstance(get_builder(None), ReferenceCNN)
    assert isinstance(get_builder("cnn"), ReferenceCNN)
    plugged = get_builder("mlcd.training.faulty:BlindModel")  # a built-in; installed ones come as entry points
    assert isinstance(plugged, ModelBuilder) and plugged.name == "blind-model"
    with pytest.raises(ValueError, match="not allowed"):
        get_builder("no.such.module:thing")
    with pytest.raises(ValueError, match="not allowed"):
        get_builder("resnet")


# --- the command -------------------------------------------------------------------------------------------


def test_trainer_args_order_and_optional_flags() -> None:
    assert trainer_args("/s", epochs=2, batch_size=32, seed=7) == [
        "--snapshot", "/s", "--epochs", "2", "--batch-size", "32", "--seed", "7",
    ]  # fmt: skip
    args = trainer_args("/s", experiment="e", dag_run_id="r", max_train_samples=100, tracking_uri="http://m", model="cnn")
    assert args[8:] == [
        "--experiment", "e", "--dag-run-id", "r", "--max-train-samples", "100", "--tracking-uri", "http://m",
        "--model", "cnn",
    ]  # fmt: skip
    assert trainer_command("python", ["--snapshot", "/s"]) == ["python", "-m", "mlcd.training", "--snapshot", "/s"]


def test_trainer_args_are_accepted_by_the_entrypoint_parser() -> None:
    from mlcd.training.__main__ import build_parser

    parsed = build_parser().parse_args(
        trainer_args("/s", epochs=2, batch_size=32, seed=7, max_train_samples="", dag_run_id="r", experiment="e")
    )
    assert (parsed.snapshot, parsed.epochs, parsed.batch_size, parsed.seed) == ("/s", 2, 32, 7)
    assert (parsed.dag_run_id, parsed.experiment, parsed.max_train_samples) == ("r", "e", None)


def test_both_backends_run_the_same_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """The local child process and the pod get identical trainer arguments; only the interpreter differs."""
    import sys

    from mlcd.airflow.training import LocalTrainOperator, make_train_task

    local = make_train_task(backend="local", snapshot="/snap", epochs=2)
    pod = make_train_task(backend="kubernetes", snapshot="/snap", epochs=2)
    assert isinstance(local, LocalTrainOperator)
    assert local.task_id == pod.task_id == "train"
    assert local.command()[0] == sys.executable
    assert local.command()[1:] == pod.arguments  # type: ignore[attr-defined]
    assert pod.cmds == ["python"]  # type: ignore[attr-defined]


def test_importing_the_task_module_stays_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, mlcd.airflow.training, mlcd.training;"
        "print(sorted(m for m in ('tensorflow', 'keras', 'mlflow', 'kubernetes') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


# --- the result line ---------------------------------------------------------------------------------------


def test_result_line_round_trip() -> None:
    line = format_result_line(_result())
    assert line.startswith(RESULT_PREFIX)
    lines = ["epoch 1/1 loss=0.1", "MLCD_TRAIN_RESULT is not this", line, "trailing noise"]
    assert parse_result(lines) == _result()


def test_result_line_problems_are_readable() -> None:
    with pytest.raises(ValueError, match="no result line"):
        parse_result(["epoch 1/1"])
    with pytest.raises(ValueError, match="not JSON"):
        parse_result([RESULT_PREFIX + "{oops"])
    incomplete = {k: v for k, v in _result().items() if k != "model_uri"}
    with pytest.raises(ValueError, match="lacks model_uri"):
        parse_result([RESULT_PREFIX + json.dumps(incomplete)])


def test_last_error_line_prefers_the_trainers_own() -> None:
    assert last_error_line(["a", ERROR_PREFIX + "snapshot /x does not exist", "", "warning after"]) == (
        "snapshot /x does not exist"
    )
    assert last_error_line(["Traceback…", "ZeroDivisionError: division by zero", ""]) == (
        "ZeroDivisionError: division by zero"
    )
    assert last_error_line([]) is None


# --- snapshot checks ---------------------------------------------------------------------------------------


def test_snapshot_problems_are_one_line(tmp_path: Path) -> None:
    from mlcd.data.snapshot import write_arrays_snapshot
    from mlcd.training.data import SnapshotError, load_training_data

    with pytest.raises(SnapshotError, match="does not exist"):
        load_training_data(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SnapshotError, match="not a readable snapshot"):
        load_training_data(tmp_path / "empty")

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(300, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, size=300).astype(np.int64)
    snap = write_arrays_snapshot(x, y, tmp_path / "snaps")
    data = load_training_data(snap.path, max_train_samples=50, seed=3)
    assert len(data.x_train) == 50 and data.snapshot_id == snap.snapshot_id
    assert len(data.x_val) == snap.counts["val"]
    again = load_training_data(f"file://{snap.path}", max_train_samples=50, seed=3)
    np.testing.assert_array_equal(again.x_train, data.x_train)  # the subset is repeatable

    (snap.path / "train.npz").write_bytes(b"not a zip at all")
    with pytest.raises(SnapshotError, match="not an .npz archive") as err:
        load_training_data(snap.path)
    assert "\n" not in str(err.value)


def test_dataset_pipeline_yields_float_pixels() -> None:
    import tensorflow as tf

    from mlcd.training.data import make_dataset

    x = np.arange(10 * 28 * 28, dtype=np.int64).reshape(10, 28, 28).astype(np.uint8)
    y = np.arange(10, dtype=np.int64)
    batches = list(make_dataset(x, y, 4, shuffle=True, seed=0))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    assert batches[0][0].dtype == tf.float32
    assert sorted(np.concatenate([b[1].numpy() for b in batches]).tolist()) == list(range(10))


def test_dataset_pipeline_is_seeded_and_reshuffles_each_epoch() -> None:
    from mlcd.training.data import make_dataset

    x = np.repeat(np.arange(50, dtype=np.uint8), 28 * 28).reshape(50, 28, 28)
    y = np.arange(50, dtype=np.int64)

    def orders(seed: int) -> list[list[int]]:
        ds = make_dataset(x, y, 8, shuffle=True, seed=seed)
        return [np.concatenate([b[1].numpy() for b in ds]).tolist() for _ in range(2)]

    first, second = orders(3)
    assert sorted(first) == list(range(50)) and first != second  # every image once per epoch, a new order each
    assert orders(3) == [first, second]  # the same seed, the same orders: a run is repeatable
    # Images and labels stay paired through the per-batch gather, and the cast keeps pixel values.
    for xb, yb in make_dataset(x, y, 8, shuffle=True, seed=3):
        np.testing.assert_array_equal(xb.numpy()[:, 0, 0], yb.numpy().astype(np.float32))
    unshuffled = np.concatenate([b[1].numpy() for b in make_dataset(x, y, 8, shuffle=False)])
    assert unshuffled.tolist() == list(range(50))


def test_trainer_fit_validates_every_epoch_and_repeats_with_the_seed() -> None:
    import keras

    from mlcd.training.data import TrainingData, make_dataset
    from mlcd.training.model import ReferenceCNN
    from mlcd.training.trainer import fit

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(200, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, size=200).astype(np.int64)
    data = TrainingData("s", "s", x[:150], y[:150], x[150:], y[150:])

    runs = []
    for _ in range(2):
        keras.utils.set_random_seed(0)
        net = ReferenceCNN().build()
        history, val_ds = fit(net, data, epochs=2, batch_size=32, seed=0)
        runs.append((history.history, net.get_weights()))
    history, weights = runs[0]
    assert len(history["val_loss"]) == len(history["loss"]) == 2  # validated after every epoch
    assert history == runs[1][0]
    for got, want in zip(runs[1][1], weights, strict=True):
        np.testing.assert_array_equal(got, want)  # the same seed trains the same weights
    assert np.concatenate([b[1].numpy() for b in val_ds]).tolist() == data.y_val.tolist()

    # The GPU settings (parallel map, autotuned prefetch) yield the very same batches in the same order.
    cpu = [b[1].numpy().tolist() for b in make_dataset(x, y, 16, shuffle=True, seed=5)]
    gpu = [b[1].numpy().tolist() for b in make_dataset(x, y, 16, shuffle=True, seed=5, accelerated=True)]
    assert cpu == gpu


def test_per_class_metrics() -> None:
    from mlcd.training.tracking import confusion_matrix, per_class_metric_dict, per_class_metrics

    cm = confusion_matrix(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), num_classes=2)
    assert cm.tolist() == [[1, 1], [0, 2]]
    metrics = per_class_metrics(cm)
    assert metrics[0]["recall"] == 0.5 and metrics[0]["precision"] == 1.0
    assert metrics[1]["precision"] == pytest.approx(2 / 3)
    assert "val_f1_class_1" in per_class_metric_dict(metrics)


def test_cli_train_reports_a_bad_snapshot(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from mlcd.cli import cli

    result = CliRunner().invoke(cli, ["train", "--snapshot", str(tmp_path / "nope"), "--epochs", "1"])
    assert result.exit_code == 1
    assert f"{ERROR_PREFIX}snapshot folder {tmp_path / 'nope'} does not exist" in result.stderr
