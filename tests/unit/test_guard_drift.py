"""Input drift on real MNIST: the test set does not drift against train; inverted, blank, noisy, dimmed and
shifted images do; the reference survives its file formats without pickle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlcd.guard import DriftMonitor, DriftReference, DriftReport, DriftThresholds, psi

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def reference(reference_data) -> DriftReference:  # type: ignore[no-untyped-def]
    return DriftReference.fit(reference_data.x_train)


@pytest.fixture(scope="module")
def x_test(reference_data) -> np.ndarray:  # type: ignore[no-untyped-def]
    return reference_data.x_test


def window_report(reference: DriftReference, images: np.ndarray, window: int = 2000) -> DriftReport:
    monitor = DriftMonitor(reference, window=window)
    monitor.update(images)
    return monitor.report()


def test_test_images_do_not_drift_against_train(reference: DriftReference, x_test: np.ndarray) -> None:
    report = window_report(reference, x_test[:2000])
    assert not report.drifted, report.reasons
    assert report.n_images == 2000
    assert report.psi_mean_intensity is not None and report.psi_mean_intensity < 0.1
    assert report.psi_ink is not None and report.psi_ink < 0.1
    assert report.anomaly_share is not None and report.anomaly_share < 0.03
    # Every random window of the minimum size, too: sampling noise stays well under the limits.
    rng = np.random.default_rng(0)
    for _ in range(20):
        r = window_report(reference, x_test[rng.choice(len(x_test), 500, replace=False)])
        assert not r.drifted, r.reasons


def test_inverted_images_drift(reference: DriftReference, x_test: np.ndarray) -> None:
    report = window_report(reference, 255 - x_test[:1000])
    assert report.drifted
    assert report.psi_mean_intensity is not None and report.psi_mean_intensity > 1.0
    assert report.anomaly_share is not None and report.anomaly_share > 0.5
    assert any("mean intensity PSI" in r for r in report.reasons)


def test_blank_images_drift(reference: DriftReference) -> None:
    report = window_report(reference, np.zeros((1000, 28, 28), dtype=np.uint8))
    assert report.drifted
    assert report.psi_mean_intensity is not None and report.psi_mean_intensity > 1.0
    assert report.psi_ink is not None and report.psi_ink > 1.0


def test_noise_images_drift_on_both_signals(reference: DriftReference) -> None:
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, size=(1000, 28, 28)).astype(np.uint8)
    report = window_report(reference, noise)
    assert report.drifted
    assert report.psi_mean_intensity is not None and report.psi_mean_intensity > 1.0
    assert report.anomaly_share is not None and report.anomaly_share > 0.9


def test_noise_scored_by_residual_not_only_mahalanobis(reference: DriftReference) -> None:
    # Why the anomaly score includes the reconstruction residual: uniform noise projects near the centre
    # of the digit subspace, so its Mahalanobis distance alone looks ordinary.
    rng = np.random.default_rng(2)
    noise = rng.integers(0, 256, size=(500, 28, 28)).astype(np.float32)
    assert (reference.mahalanobis(noise) > reference.distance_scale).mean() < 0.05
    assert (reference.score(noise)[:, 2] > reference.anomaly_threshold).mean() > 0.9


def test_shifted_digits_drift_on_anomaly_share_alone(reference: DriftReference, x_test: np.ndarray) -> None:
    # Same pixels, moved 6 columns: intensity features cannot see it, the anomaly score can.
    report = window_report(reference, np.roll(x_test[:1000], 6, axis=2))
    assert report.drifted
    assert report.psi_mean_intensity is not None and report.psi_mean_intensity < 0.1
    assert report.anomaly_share is not None and report.anomaly_share > 0.2
    assert len(report.reasons) == 1 and "anomaly line" in report.reasons[0]


def test_dimmed_images_drift(reference: DriftReference, x_test: np.ndarray) -> None:
    report = window_report(reference, (x_test[:1000] * 0.6).astype(np.uint8))
    assert report.drifted and report.psi_mean_intensity is not None and report.psi_mean_intensity > 0.5


def test_reference_round_trips_npz_without_pickle(
    reference: DriftReference, x_test: np.ndarray, tmp_path: Path
) -> None:
    path = reference.save(tmp_path / "drift_reference.npz")
    with np.load(path, allow_pickle=False) as archive:  # loads: no object arrays inside
        assert all(archive[k].dtype == np.float64 for k in archive.files)
    loaded = DriftReference.load(path)
    assert path.stat().st_size < 200_000
    np.testing.assert_array_equal(loaded.score(x_test[:200]), reference.score(x_test[:200]))
    assert loaded.anomaly_threshold == reference.anomaly_threshold
    assert loaded.image_shape == (28, 28) and loaded.n_reference == reference.n_reference


def test_reference_round_trips_json(reference: DriftReference, x_test: np.ndarray, tmp_path: Path) -> None:
    path = reference.save(tmp_path / "drift_reference.json")
    data = json.loads(path.read_text())
    assert data["format_version"] == 1 and len(data["components"]) == 8
    loaded = DriftReference.load(path)
    np.testing.assert_allclose(loaded.score(x_test[:200]), reference.score(x_test[:200]), rtol=1e-12)


def test_reference_files_that_are_wrong_are_refused(tmp_path: Path, reference: DriftReference) -> None:
    bad = tmp_path / "other.npz"
    np.savez(bad, x=np.zeros(3))
    with pytest.raises(ValueError, match="not a drift reference"):
        DriftReference.load(bad)
    data = reference.to_dict()
    data["format_version"] = 99
    with pytest.raises(ValueError, match="format_version"):
        DriftReference.from_dict(data)
    data = reference.to_dict()
    del data["proj_cov"]
    with pytest.raises(ValueError, match="lacks proj_cov"):
        DriftReference.from_dict(data)
    pickled = tmp_path / "pickled.npz"
    objects = {k: np.array([object()], dtype=object) for k in ("mean_edges", "meta")}
    np.savez(pickled, **objects)  # type: ignore[arg-type]
    with pytest.raises(ValueError):  # numpy refuses object arrays without allow_pickle
        DriftReference.load(pickled)


def test_monitor_window_is_bounded_and_recent(reference: DriftReference, x_test: np.ndarray) -> None:
    monitor = DriftMonitor(reference, window=600)
    monitor.update(255 - x_test[:600])
    assert monitor.report().drifted
    for i in range(0, 600, 100):  # healthy traffic, 100 images at a time, pushes the inverted ones out
        monitor.update(x_test[1000 + i : 1100 + i])
    report = monitor.report()
    assert monitor.n_images == 600 and report.n_images == 600
    assert not report.drifted, report.reasons
    monitor.reset()
    assert monitor.report().n_images == 0


def test_too_few_images_never_drift(reference: DriftReference) -> None:
    monitor = DriftMonitor(reference)
    assert monitor.report().reasons == ("no live images yet",)
    monitor.update(np.zeros((50, 28, 28), dtype=np.uint8))
    report = monitor.report()
    assert not report.drifted and report.n_images == 50 and "50 live images < 500" in report.reasons[0]
    assert report.psi_ink is not None and report.psi_ink > 1.0  # measured, just not judged yet
    assert json.loads(json.dumps(report.as_dict()))["n_images"] == 50


def test_monitor_accepts_gateway_shapes_and_refuses_bad_input(
    reference: DriftReference, x_test: np.ndarray
) -> None:
    monitor = DriftMonitor(reference, thresholds=DriftThresholds(min_images=1))
    monitor.update(x_test[0].astype(np.float32))  # one 28×28 image, float 0–255 as the gateway parses it
    monitor.update(x_test[1:3].reshape(2, 784))
    assert monitor.n_images == 3
    with pytest.raises(ValueError, match="N×28×28"):
        monitor.update(np.zeros((2, 27, 28)))
    with pytest.raises(ValueError, match="NaN"):
        monitor.update(np.full((1, 28, 28), np.nan))
    with pytest.raises(ValueError, match="numeric"):
        monitor.update(np.array([["a"]]))


def test_psi_values() -> None:
    shares = np.full(10, 0.1)
    assert psi(shares, shares) == 0.0
    assert psi(shares, np.eye(10)[0]) > 5  # everything in one bin
    assert 0 < psi(shares, np.array([0.12, 0.08] * 5)) < 0.05
