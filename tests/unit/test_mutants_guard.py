"""Guard behaviour the other unit tests did not pin down, found by the mutation run (bench/mutation.py, issue 18).

Drift (on small synthetic image sets, so each reference fits in milliseconds), the drift signal's reference cache,
gauges and cooldown (a real ``/metrics`` endpoint on 127.0.0.1), and the guard's poll phases (the gateway's real
metrics registry). Each test names the behaviour it checks.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import generate_latest

from mlcd.guard.drift import DriftMonitor, DriftReference, DriftThresholds
from mlcd.guard.signals import (
    load_or_fit_reference,
    read_drift,
    reference_cache_path,
    should_signal,
)
from mlcd.guard.watch import Decision, Guard, GuardConfig, GuardState, Phase, parse_scrape
from mlcd.serving.metrics import GatewayMetrics
from tests.gatewaysim import serve_metrics

pytestmark = pytest.mark.unit


def _digits(n: int, seed: int = 0, shift: int = 0) -> np.ndarray:
    """``n`` 28×28 uint8 images of a bright bar at a random row near the middle (plus ``shift`` rows)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 30, size=(n, 28, 28)).astype(np.uint8)
    for i, row in enumerate(rng.integers(10, 18, size=n)):
        x[i, row + shift : row + shift + 3, 6:22] = rng.integers(180, 255)
    return x


@pytest.fixture(scope="module")
def ref() -> DriftReference:
    return DriftReference.fit(_digits(400), n_components=4)


# ------------------------------------------------------------------------------------------------ drift
def test_drift_thresholds_accept_their_boundaries_and_refuse_beyond() -> None:
    DriftThresholds(psi=1e-9, anomaly_share=0.5, min_images=1)
    for bad in ({"psi": 0.0}, {"anomaly_share": 0.0}, {"anomaly_share": 1.0}, {"min_images": 0}):
        with pytest.raises(ValueError):
            DriftThresholds(**bad)  # type: ignore[arg-type]


def _fields(ref: DriftReference) -> dict[str, Any]:
    """The constructor's arguments of ``ref`` (its dict form without the file-format marker)."""
    data = ref.to_dict()
    data.pop("format_version")
    return data


def test_a_malformed_reference_is_refused_field_by_field(ref: DriftReference) -> None:
    good = ref.to_dict()
    for change, message in (
        ({"pixel_mean": [math.nan] * 784}, "pixel_mean has non-finite values"),
        ({"ink_shares": [*good["ink_shares"], 0.0]}, "one more entry"),
        ({"mean_shares": good["mean_shares"][:-1]}, "one more entry"),
        ({"proj_mean": [*good["proj_mean"], 0.0]}, "number of components"),
        ({"image_shape": [27, 28]}, "disagree"),
        ({"format_version": 99}, "format_version"),
    ):
        with pytest.raises(ValueError, match=message):
            DriftReference.from_dict({**good, **change})
    with pytest.raises(ValueError, match="must be 2-D"):
        DriftReference(**{**_fields(ref), "proj_cov": np.ones(len(ref.components))})
    with pytest.raises(ValueError, match="must be 2-D"):
        DriftReference(**{**_fields(ref), "components": np.zeros((1, 1, 784))})
    DriftReference.from_dict(good)  # the untouched dict is fine


def test_a_reference_needs_twenty_images_and_an_anomaly_quantile_strictly_inside_0_1() -> None:
    DriftReference.fit(_digits(20), n_components=4)
    with pytest.raises(ValueError, match="at least 20 reference images, got 19"):
        DriftReference.fit(_digits(19), n_components=4)
    with pytest.raises(ValueError, match="at least 24 reference images"):
        DriftReference.fit(_digits(23), n_components=12)
    for q in (0.0, 1.0):
        with pytest.raises(ValueError, match="anomaly_quantile"):
            DriftReference.fit(_digits(40), anomaly_quantile=q)


def test_the_reference_mean_image_is_at_distance_zero_and_distances_follow_the_fitted_gaussian(
    ref: DriftReference,
) -> None:
    mean_image = (ref.pixel_mean * 255.0).reshape(28, 28)
    assert ref.mahalanobis(mean_image[None])[0] == pytest.approx(0.0, abs=1e-6)
    x = _digits(5, seed=3)
    flat = x.reshape(5, -1) / 255.0
    d = (flat - ref.pixel_mean) @ ref.components.T - ref.proj_mean
    expected = np.sqrt(np.einsum("ij,jk,ik->i", d, np.linalg.pinv(ref.proj_cov), d))
    assert ref.mahalanobis(x) == pytest.approx(expected, rel=1e-6)
    # The components are orthonormal principal directions of the centred reference.
    assert ref.components @ ref.components.T == pytest.approx(np.eye(len(ref.components)), abs=1e-8)


def test_the_anomaly_line_passes_about_one_percent_of_held_out_reference_images(ref: DriftReference) -> None:
    scores = ref.score(_digits(2000, seed=9))[:, 2]
    assert 0.0 < float((scores > ref.anomaly_threshold).mean()) < 0.05
    assert ref.distance_scale > 0 and ref.residual_scale > 0


def test_every_field_survives_the_npz_and_json_files(ref: DriftReference, tmp_path: Path) -> None:
    for name in ("ref.npz", "ref.json"):
        loaded = DriftReference.load(ref.save(tmp_path / name))
        got = loaded.to_dict()
        for key, value in ref.to_dict().items():
            assert got[key] == (pytest.approx(value) if isinstance(value, float) else value), (name, key)


def test_the_monitor_window_keeps_exactly_the_latest_images(ref: DriftReference) -> None:
    t = DriftThresholds(min_images=1)
    recent = _digits(10, seed=5)
    rolled = DriftMonitor(ref, t, window=10)
    rolled.update(np.zeros((7, 28, 28), dtype=np.uint8))  # blank images first, then pushed out
    rolled.update(recent[:6])
    rolled.update(recent[6:])
    fresh = DriftMonitor(ref, t, window=10)
    fresh.update(recent)
    assert rolled.n_images == 10
    assert rolled.report() == fresh.report()
    fresh.reset()
    assert fresh.n_images == 0 and fresh.report().reasons == ("no live images yet",)


def test_drift_names_each_signal_over_its_threshold_and_a_value_at_the_threshold_is_not_drift(
    ref: DriftReference,
) -> None:
    blank = DriftMonitor(ref, DriftThresholds(min_images=10), window=100)
    blank.update(np.zeros((50, 28, 28), dtype=np.uint8))
    report = blank.report()
    assert report.drifted and report.n_images == 50
    assert any(r.startswith("mean intensity PSI") for r in report.reasons)
    assert any(r.startswith("ink ratio PSI") for r in report.reasons)
    assert report.as_dict()["reasons"] == list(report.reasons)
    at = DriftMonitor(ref, DriftThresholds(psi=report.psi_mean_intensity, anomaly_share=0.999, min_images=10), 100)
    at.update(np.zeros((50, 28, 28), dtype=np.uint8))
    reasons = at.report().reasons
    assert not any(r.startswith("mean intensity PSI") for r in reasons)  # equal is not over
    calm = DriftMonitor(ref, DriftThresholds(min_images=10), window=500)
    calm.update(_digits(400, seed=11))
    quiet = calm.report()
    assert not quiet.drifted and quiet.reasons[0].startswith("no drift over 400 images")


def test_images_of_the_wrong_shape_or_with_nan_are_refused(ref: DriftReference) -> None:
    with pytest.raises(ValueError, match="N×H×W"):
        DriftReference.fit(np.zeros((40, 784), dtype=np.uint8))
    bad = _digits(2).astype(np.float64)
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        ref.score(bad)
    assert ref.score(_digits(2).astype(np.int64)).shape == (2, 3)  # integers need no finiteness check


# ------------------------------------------------------------------------------------------------ signals
def test_the_reference_cache_is_named_by_a_safe_snapshot_id_only(tmp_path: Path) -> None:
    assert reference_cache_path(tmp_path, "snap-1.a_b") == tmp_path / "drift" / "reference-snap-1.a_b.npz"
    for unsafe in (None, "", "../etc", "a/b"):
        assert reference_cache_path(tmp_path, unsafe) == tmp_path / "drift" / "reference-reference.npz"


def test_the_reference_is_fitted_from_the_served_snapshot_then_read_from_its_cache(tmp_path: Path) -> None:
    import shutil

    from mlcd.data.snapshot import load_split, write_arrays_snapshot

    images = _digits(300, seed=2)
    snap = write_arrays_snapshot(images, np.zeros(300, dtype=np.int64), tmp_path / "snapshots")
    train = load_split(snap, "train")[0]
    storage_url = tmp_path.as_uri()
    fitted = load_or_fit_reference(tmp_path, snap.snapshot_id, storage_url)
    cache = reference_cache_path(tmp_path, snap.snapshot_id)
    assert cache.exists() and fitted.n_reference == len(train) < 300  # the snapshot's train split, not all
    assert fitted.pixel_mean == pytest.approx(DriftReference.fit(train).pixel_mean)
    cache.write_bytes(b"corrupt")  # a corrupt cache is refitted, not fatal
    assert load_or_fit_reference(tmp_path, snap.snapshot_id, storage_url).anomaly_threshold == fitted.anomaly_threshold
    assert DriftReference.load(cache).n_reference == len(train)  # and written again
    shutil.rmtree(snap.path)  # from now on only the cache can answer
    again = load_or_fit_reference(tmp_path, snap.snapshot_id, storage_url)
    assert again.n_reference == len(train) and again.anomaly_threshold == fitted.anomaly_threshold


def test_drift_gauges_are_read_from_the_gateway_and_none_without_them() -> None:
    text = (
        b"# TYPE mlcd_gateway_drift_psi gauge\n"
        b'mlcd_gateway_drift_psi{feature="mean_intensity"} 0.31\n'
        b'mlcd_gateway_drift_psi{feature="ink"} NaN\n'
        b"# TYPE mlcd_gateway_drift_anomaly_share gauge\nmlcd_gateway_drift_anomaly_share 0.02\n"
        b"# TYPE mlcd_gateway_drift_drifted gauge\nmlcd_gateway_drift_drifted 1.0\n"
        b"# TYPE mlcd_gateway_drift_images gauge\nmlcd_gateway_drift_images 640.0\n"
    )
    with serve_metrics(lambda: text) as url:
        status = read_drift(url)
    assert status is not None
    assert status.as_dict() == {"drifted": True, "psi_mean_intensity": 0.31, "psi_ink": None,
                                "anomaly_share": 0.02, "n_images": 640}
    with serve_metrics(lambda: b"# TYPE other gauge\nother 1.0\n") as url:
        assert read_drift(url) is None


def test_a_drift_signal_is_sent_once_per_cooldown_and_recorded_in_the_state_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new-state.sqlite'}"  # a fresh database: the schema is created on first use
    assert should_signal(600, now=1000.0, url=url) is True
    assert should_signal(600, now=1599.0, url=url) is False
    assert should_signal(600, now=1600.0, url=url) is True
    assert should_signal(600, now=1601.0, url=url) is False  # the 1600 signal started a new cooldown


# ------------------------------------------------------------------------------------------------ guard polls
class _Gw:
    def __init__(self) -> None:
        self.m = GatewayMetrics()

    def serve(self, stable: str, canary: str | None, weight: int = 50) -> None:
        self.m.set_served({"stable": stable, "canary": canary}, weight if canary else 0)

    def scrape(self, _url: str) -> Any:
        return parse_scrape(generate_latest(self.m.registry).decode())


def test_guard_config_needs_a_positive_poll_interval_and_allows_no_bake() -> None:
    GuardConfig("http://127.0.0.1:1", poll_interval_s=0.001, bake_s=0, grace_s=0)
    for bad in ({"poll_interval_s": 0}, {"bake_s": -1}, {"grace_s": -1}):
        with pytest.raises(ValueError):
            GuardConfig("http://127.0.0.1:1", **bad)  # type: ignore[arg-type]
    assert GuardConfig("u", version=7).version == "7"


def test_only_the_served_model_info_names_a_variant() -> None:
    text = ('# TYPE mlcd_gateway_model_info gauge\n'
            'mlcd_gateway_model_info{variant="stable",version="1"} 1.0\n'
            'mlcd_gateway_model_info{variant="canary",version="2"} 0.0\n')
    assert parse_scrape(text).served == {"stable": "1"}


def test_a_guard_for_any_canary_takes_the_first_one_served_and_one_for_a_champion_bakes_it() -> None:
    gw = _Gw()
    gw.serve("1", "2")
    r = Guard(GuardConfig("u"), scrape=gw.scrape, clock=lambda: 1000.0).poll()
    assert (r.decision, r.state.phase, r.state.version, r.state.stable) == (Decision.WATCH, Phase.CANARY.value,
                                                                           "2", "1")
    gw.serve("2", None)
    r = Guard(GuardConfig("u", version="2"), scrape=gw.scrape, clock=lambda: 1000.0).poll()
    assert r.decision is Decision.WATCH and r.reason == "version 2 already champion: baking"
    assert (r.state.phase, r.state.version, r.state.promoted_at) == (Phase.BAKE.value, "2", 1000.0)
    assert GuardState.from_dict(None).phase == Phase.WAITING.value


def test_a_breach_names_the_role_the_version_and_the_failed_check() -> None:
    gw = _Gw()
    gw.serve("1", "2")
    clock = [1000.0]
    guard = Guard(GuardConfig("u", version="2"), scrape=gw.scrape, clock=lambda: clock[0])
    r = guard.poll()
    for _ in range(30):
        for i in range(40):
            gw.m.requests.labels("1", "stable").inc()
            gw.m.latency.labels("1", "stable").observe(0.004)
            gw.m.predictions.labels("1", "stable", str(i % 10)).inc()
            gw.m.requests.labels("2", "canary").inc()
            gw.m.latency.labels("2", "canary").observe(0.004)
            gw.m.predictions.labels("2", "canary", "3").inc()
        clock[0] += 2
        r = guard.poll(r.state)
        if r.decision is Decision.BREACH:
            break
    assert r.decision is Decision.BREACH
    assert r.reason.startswith("canary version 2 failed: class_distribution:")
    assert r.as_dict()["verdict"]["outcome"] == "fail" and r.as_dict()["version"] == "2"


def test_an_empty_window_is_not_drift(ref: DriftReference) -> None:
    report = DriftMonitor(ref, DriftThresholds(min_images=1)).report()
    assert report.drifted is False and report.n_images == 0
    assert report.as_dict() == {"psi_mean_intensity": None, "psi_ink": None, "anomaly_share": None,
                                "drifted": False, "reasons": ["no live images yet"], "n_images": 0}
