"""Where the reference dataset comes from: MLCD_DATA, data/mnist.npz, the Keras cache, else scikit-learn's digits.

Each branch is exercised with files crafted here; nothing is downloaded. The demo's plan is derived from whichever
dataset was found, so the same tests check that 1,797 digits give a story that fits.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest

import mlcd.data.reference as reference
from mlcd.data.reference import (
    ReferenceData,
    digits_as_mnist,
    keras_cache_path,
    load_mnist_npz,
    load_reference,
    reference_path,
    write_sample_batches,
)
from mlcd.demo import MIN_BATCH, SMALL_RETRAIN_DEFAULTS, DemoPlan, write_demo_batches
from mlcd.settings import get_settings

pytestmark = pytest.mark.unit


def mnist_file(path: Path, n_train: int = 40, n_test: int = 10, **override: np.ndarray) -> Path:
    """A small file in the mnist.npz layout; ``override`` replaces (or, with an empty array, drops) a key."""
    rng = np.random.default_rng(len(str(path)))
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": np.arange(n_train, dtype=np.uint8) % 10,
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": np.arange(n_test, dtype=np.uint8) % 10,
    }
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v.size or k not in override}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


@pytest.fixture
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No MLCD_DATA, a checkout without data/mnist.npz and a HOME without ~/.keras: the newcomer's machine."""
    checkout = tmp_path / "checkout"
    (checkout / "data").mkdir(parents=True)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.delenv("MLCD_DATA", raising=False)
    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.setenv("HOME", str(home))
    # Only the checkout's location is redirected; everything else is the real settings.
    monkeypatch.setattr(reference, "get_settings", lambda: dataclasses.replace(get_settings(), project_root=checkout))
    return tmp_path


def test_without_any_file_the_scikit_learn_digits_are_used_and_the_log_says_so(nowhere, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING, logger="mlcd.data.reference")
    assert reference_path() is None
    ref = load_reference()
    assert ref.origin == "scikit-learn" and ref.n_images == 1797
    assert ref.x_train.shape[1:] == (28, 28) and ref.x_train.dtype == np.uint8
    assert set(np.unique(ref.y_train)) == set(range(10))
    assert "scikit-learn digits (1,797 images" in ref.name
    assert "1,797 real digits" in caplog.text and str(nowhere / "home" / ".keras" / "datasets" / "mnist.npz") in caplog.text


def test_mlcd_data_is_used_first(nowhere, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    chosen = mnist_file(nowhere / "elsewhere" / "mine.npz", n_train=30)
    mnist_file(nowhere / "checkout" / "data" / "mnist.npz", n_train=20)
    mnist_file(nowhere / "home" / ".keras" / "datasets" / "mnist.npz", n_train=50)
    monkeypatch.setenv("MLCD_DATA", str(chosen))
    ref = load_reference()
    assert (ref.origin, ref.source, len(ref.x_train)) == ("MLCD_DATA", str(chosen), 30)
    assert ref.y_train.dtype == np.int64  # labels widened from the file's uint8
    assert f"MNIST from MLCD_DATA {chosen} (40 images)" == ref.name


def test_the_checkout_data_file_comes_before_the_keras_cache(nowhere) -> None:  # type: ignore[no-untyped-def]
    local = mnist_file(nowhere / "checkout" / "data" / "mnist.npz", n_train=20)
    mnist_file(nowhere / "home" / ".keras" / "datasets" / "mnist.npz", n_train=50)
    ref = load_reference()
    assert (ref.origin, ref.source, len(ref.x_train)) == ("data/mnist.npz", str(local), 20)


def test_the_keras_cache_under_home_is_found(nowhere, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="mlcd.data.reference")
    cached = mnist_file(nowhere / "home" / ".keras" / "datasets" / "mnist.npz", n_train=50)
    assert keras_cache_path() == cached
    ref = load_reference()
    assert (ref.origin, ref.source, len(ref.x_train)) == ("Keras cache", str(cached), 50)
    assert f"reference data: MNIST from Keras cache {cached}" in caplog.text


def test_keras_home_is_honoured(nowhere, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    mnist_file(nowhere / "home" / ".keras" / "datasets" / "mnist.npz", n_train=50)
    cached = mnist_file(nowhere / "kh" / "datasets" / "mnist.npz", n_train=25)
    monkeypatch.setenv("KERAS_HOME", str(nowhere / "kh"))
    ref = load_reference()
    assert (ref.origin, ref.source, len(ref.x_train)) == ("Keras cache", str(cached), 25)


def test_a_missing_mlcd_data_file_looks_further(nowhere, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING, logger="mlcd.data.reference")
    monkeypatch.setenv("MLCD_DATA", str(nowhere / "gone.npz"))
    cached = mnist_file(nowhere / "home" / ".keras" / "datasets" / "mnist.npz")
    assert load_reference().source == str(cached)
    assert "gone.npz does not exist" in caplog.text


BAD_FILES = {
    "float images": ({"x_train": np.zeros((40, 28, 28), dtype=np.float32)}, "x_train is float32; expected uint8"),
    "wrong shape": ({"x_test": np.zeros((10, 32, 32), dtype=np.uint8)}, "x_test has shape (10, 32, 32); expected N×28×28"),
    "flat images": ({"x_train": np.zeros((40, 784), dtype=np.uint8)}, "expected N×28×28"),
    "label 10": ({"y_train": np.full(40, 10, dtype=np.int64)}, "y_train has labels 10..10; expected 0-9"),
    "negative label": ({"y_test": np.full(10, -1, dtype=np.int64)}, "expected 0-9"),
    "float labels": ({"y_train": np.zeros(40, dtype=np.float64)}, "y_train is float64; expected integer labels"),
    "short labels": ({"y_train": np.zeros(39, dtype=np.int64)}, "expected 40 labels, one per image"),
    "missing key": ({"y_test": np.zeros(0, dtype=np.int64)}, "lacks y_test"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_an_invalid_mlcd_data_file_is_one_clear_error(nowhere, monkeypatch, case) -> None:  # type: ignore[no-untyped-def]
    override, phrase = BAD_FILES[case]
    bad = mnist_file(nowhere / "bad.npz", **override)
    monkeypatch.setenv("MLCD_DATA", str(bad))
    with pytest.raises(ValueError) as err:
        load_reference()
    message = str(err.value)
    assert message.startswith(f"MLCD_DATA: {bad}") and phrase in message and "\n" not in message


def test_object_arrays_are_refused_never_unpickled(nowhere, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    bad = nowhere / "pickled.npz"
    labels = np.empty(40, dtype=object)
    labels[:] = [object() for _ in range(40)]
    mnist_file(bad, y_train=labels)
    with pytest.raises(ValueError, match="object arrays .refused: never unpickled"):
        load_mnist_npz(bad)


def test_a_file_that_is_not_an_npz_is_one_clear_error(nowhere) -> None:  # type: ignore[no-untyped-def]
    bad = nowhere / "text.npz"
    bad.write_text("not a zip")
    with pytest.raises(ValueError, match=f"^{bad}: "):
        load_mnist_npz(bad)


def test_an_invalid_keras_cache_is_skipped_with_its_reason(nowhere, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING, logger="mlcd.data.reference")
    mnist_file(nowhere / "home" / ".keras" / "datasets" / "mnist.npz", x_train=np.zeros((40, 28, 28), dtype=np.int32))
    ref = load_reference()
    assert ref.origin == "scikit-learn"
    assert "Keras cache skipped:" in caplog.text and "x_train is int32" in caplog.text


def test_sample_batches_say_when_the_dataset_is_too_small(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING, logger="mlcd.data.reference")
    paths = write_sample_batches(tmp_path, [1000, 1000], seed=1, ref=digits_as_mnist())
    sizes = [len(np.load(p)["y"]) for p in paths]
    assert sizes == [1000, 797]
    assert "cut 797 of the 1000 asked for" in caplog.text


def test_the_demo_plan_on_the_digits_fits_the_suite_and_the_gate() -> None:
    ref = digits_as_mnist()
    plan = DemoPlan.for_reference(ref)
    assert (plan.first, plan.second, plan.inverted) == (809, 809, 179)
    assert plan.first + plan.second + plan.inverted <= ref.n_images
    assert plan.inverted >= MIN_BATCH  # refused for being inverted, not for being small
    assert plan.retrain_defaults == SMALL_RETRAIN_DEFAULTS
    assert plan.retrain_defaults["gate"]["accuracy_floor"] < 0.9  # the gate's MNIST default would refuse ~650 images
    assert ["batch 1 (good)", "809 images"] in plan.rows()
    assert plan.short == "scikit-learn digits"


def test_the_demo_plan_on_mnist_keeps_its_sizes_and_the_dag_defaults() -> None:
    n = 70_000
    fake = ReferenceData(np.zeros((n - 10_000, 28, 28), np.uint8), np.zeros(n - 10_000, np.int64),
                         np.zeros((10_000, 28, 28), np.uint8), np.zeros(10_000, np.int64), "mnist.npz", "MLCD_DATA")
    plan = DemoPlan.for_reference(fake)
    assert (plan.first, plan.second, plan.inverted) == (8000, 8000, 1000)
    assert plan.retrain_defaults == {}


def test_a_dataset_too_small_for_the_demo_is_refused_in_one_line() -> None:
    tiny = ReferenceData(np.zeros((500, 28, 28), np.uint8), np.zeros(500, np.int64),
                         np.zeros((100, 28, 28), np.uint8), np.zeros(100, np.int64), "tiny.npz", "MLCD_DATA")
    with pytest.raises(ValueError, match="holds 600 images; the demo needs at least 700"):
        DemoPlan.for_reference(tiny)


def test_demo_batches_on_the_digits_have_every_class_and_an_inverted_third(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ref = digits_as_mnist()
    plan = DemoPlan.for_reference(ref)
    batches = write_demo_batches(tmp_path, plan, ref)
    loaded = {k: np.load(p) for k, p in batches.items()}
    assert [len(loaded[k]["y"]) for k in ("first", "second", "inverted")] == [809, 809, 179]
    for key in ("first", "second"):
        shares = np.bincount(loaded[key]["y"], minlength=10) / len(loaded[key]["y"])
        assert shares.min() >= 0.02 and shares.max() <= 0.3  # the suite's class-balance rules
        assert 15 <= loaded[key]["x"].mean() <= 80  # the suite's batch-brightness rule
    assert loaded["inverted"]["x"].mean() > 130  # inverted: refused as such
    firsts = {a.tobytes() for a in loaded["first"]["x"]}
    assert not any(a.tobytes() in firsts for a in loaded["second"]["x"][:50])  # disjoint cuts
