"""Input drift of live traffic against the training snapshot, in pure NumPy.

Two complementary signals, both computed per image, so the live window holds three floats an image, not
pixels:

* **Population stability index** on two intensity features the validation suite already uses, the mean
  intensity (0–255 scale) and the ink ratio (share of pixels above 127). Bins are the reference's deciles, so
  each holds 10 % of the reference and the index weighs every part of the distribution alike;
  ``PSI = sum((live - ref) * ln(live / ref))`` over bins, with shares floored at 1e-4 so an empty bin is
  finite. The usual reading is < 0.1 stable, 0.1–0.25 moderate, > 0.25 major; sampling noise alone adds about
  ``(bins - 1) / n`` (≈ 0.02 for 500 live images, the minimum judged), well below the default limit of 0.25.
* **A Gaussian anomaly score** on a low-dimensional projection: PCA (the singular vectors of the reference's
  covariance, 8 components) captures the shape of digits; a Gaussian fitted to the projected reference gives
  each image a Mahalanobis distance. That distance alone is blind to anything *off* the digit subspace:
  uniform noise projects close to the centre and measured 0 % beyond the line. So, as in PCA process
  monitoring (Hotelling's T² with the Q / squared-prediction-error statistic), the score also looks at the
  reconstruction residual, the part of the image the projection cannot explain: score = max(distance / its
  reference 99th percentile, residual / its reference 99th percentile). The anomaly line is the 99th
  percentile of that score on held-out reference images, so about 1 % of in-distribution images lie beyond it
  and a live share of 5 % (the default limit) is drift, not noise: for 500 images
  P(Binomial(500, 0.01) > 25) < 1e-8.

PSI catches global shifts (brightness, dimmed, inverted or blank images); the anomaly score catches images
whose brightness looks normal but whose shape does not (noise, shifted or rotated digits, other kinds of
pictures). Measured on MNIST (2,000 images each): test set against train PSI 0.06 / anomalies 1.1 %;
inverted PSI 8.3 / 100 %; blank PSI 8.3; uniform noise PSI 8.3 / 100 %; digits shifted 6 px, the test set's
PSI / 47 %; dimmed to 60 % PSI 3.1.

:class:`DriftReference` is built once from the training images and saved as ``.npz`` (numeric arrays only, so
it loads with ``allow_pickle=False``) or ``.json``; :class:`DriftMonitor` scores live images into a bounded
window and reports.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

INK_THRESHOLD = 127  # a pixel "has ink" above half scale: the same rule as mlcd.validation.summary
PSI_FLOOR = 1e-4  # share given to an empty bin so the logarithm stays finite
FORMAT_VERSION = 1


@dataclass(frozen=True)
class DriftThresholds:
    """When a live window counts as drifted.

    Attributes:
        psi: either feature's PSI above this is drift (0.25, "major" by the usual reading; MNIST's own
            test set measures 0.06 against train, and 500-image windows of it at most about 0.06).
        anomaly_share: a share of live images beyond the reference's anomaly line above this is drift
            (the reference itself has about 1 - ``DriftReference.anomaly_quantile``).
        min_images: fewer live images never report drift (too noisy to say).
    """

    psi: float = 0.25
    anomaly_share: float = 0.05
    min_images: int = 500

    def __post_init__(self) -> None:
        if self.psi <= 0 or not 0 < self.anomaly_share < 1 or self.min_images < 1:
            raise ValueError("psi must be > 0, anomaly_share in (0, 1), min_images >= 1")


@dataclass(frozen=True)
class DriftReport:
    """Drift of the live window against the reference.

    Attributes:
        psi_mean_intensity: PSI of the mean intensity (``None`` with no live images).
        psi_ink: PSI of the ink ratio (``None`` with no live images).
        anomaly_share: share of live images beyond the reference's anomaly line (``None`` with no images).
        drifted: whether any signal passed its threshold with at least ``min_images`` images.
        reasons: one line per signal over its threshold, or why drift was not judged.
        n_images: live images in the window.
    """

    psi_mean_intensity: float | None
    psi_ink: float | None
    anomaly_share: float | None
    drifted: bool
    reasons: tuple[str, ...]
    n_images: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "psi_mean_intensity": self.psi_mean_intensity,
            "psi_ink": self.psi_ink,
            "anomaly_share": self.anomaly_share,
            "drifted": self.drifted,
            "reasons": list(self.reasons),
            "n_images": self.n_images,
        }


@dataclass(frozen=True, eq=False)
class DriftReference:
    """What live traffic is compared with: feature bins and a Gaussian on a PCA projection of the reference.

    Attributes:
        mean_edges: interior bin edges of the mean intensity (the reference's deciles, deduplicated).
        mean_shares: the reference's share in each of the ``len(mean_edges) + 1`` bins.
        ink_edges: interior bin edges of the ink ratio.
        ink_shares: the reference's share in each ink bin.
        pixel_mean: the reference's mean image (flattened, 0–1 scale).
        components: PCA directions, ``k × pixels`` (rows orthonormal).
        proj_mean: mean of the projected reference.
        proj_cov: covariance of the projected reference, ``k × k``.
        distance_scale: the reference's ``anomaly_quantile`` of the Mahalanobis distance (held-out images).
        residual_scale: the reference's ``anomaly_quantile`` of the reconstruction residual norm (held-out).
        anomaly_threshold: the ``anomaly_quantile`` of the combined score on held-out reference images.
        anomaly_quantile: the quantile the threshold was taken at (0.99).
        image_shape: ``(height, width)`` of the images.
        n_reference: how many reference images built it.
    """

    mean_edges: np.ndarray
    mean_shares: np.ndarray
    ink_edges: np.ndarray
    ink_shares: np.ndarray
    pixel_mean: np.ndarray
    components: np.ndarray
    proj_mean: np.ndarray
    proj_cov: np.ndarray
    distance_scale: float
    residual_scale: float
    anomaly_threshold: float
    anomaly_quantile: float = 0.99
    image_shape: tuple[int, int] = (28, 28)
    n_reference: int = 0
    _precision: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in _ARRAY_FIELDS:
            arr = np.asarray(getattr(self, name), dtype=np.float64)
            if arr.size == 0 and name in ("pixel_mean", "components", "proj_mean", "proj_cov"):
                raise ValueError(f"drift reference field {name} is empty")
            if not np.isfinite(arr).all():
                raise ValueError(f"drift reference field {name} has non-finite values")
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "image_shape", tuple(int(v) for v in self.image_shape))
        if self.components.ndim != 2 or self.proj_cov.ndim != 2:
            raise ValueError("components and proj_cov must be 2-D")
        k, pixels = self.components.shape
        if self.pixel_mean.shape != (pixels,) or pixels != self.image_shape[0] * self.image_shape[1]:
            raise ValueError("pixel_mean, components and image_shape disagree")
        if self.proj_mean.shape != (k,) or self.proj_cov.shape != (k, k):
            raise ValueError("proj_mean / proj_cov do not match the number of components")
        if self.mean_shares.shape != (self.mean_edges.size + 1,) or self.ink_shares.shape != (
            self.ink_edges.size + 1,
        ):
            raise ValueError("bin shares must have one more entry than bin edges")
        # pinv: a component with (near) zero variance must not blow the distance up to inf.
        object.__setattr__(self, "_precision", np.linalg.pinv(self.proj_cov, hermitian=True))

    @classmethod
    def fit(
        cls,
        images: np.ndarray,
        *,
        n_components: int = 8,
        n_bins: int = 10,
        anomaly_quantile: float = 0.99,
        max_images: int = 10000,
        seed: int = 0,
    ) -> DriftReference:
        """Build a reference from training images (uint8 or float, 0–255 scale, ``N×H×W``).

        Args:
            images: the reference images (the training snapshot).
            n_components: PCA components of the projection.
            n_bins: PSI bins per feature (the reference's quantiles).
            anomaly_quantile: where the anomaly line is drawn on the held-out reference distances.
            max_images: a random subsample this large is used (the statistics converge long before 60,000,
                and fitting stays around a second).
            seed: the subsample's seed, so a reference is reproducible from its snapshot.

        Returns:
            The reference. The PCA and Gaussian are fitted on one half of the subsample and the anomaly line
            is drawn on the other, so the line is not biased low by in-sample fit.
        """
        x = _as_images(images)
        n = len(x)
        if n < 2 * max(n_components, n_bins, 10):
            raise ValueError(f"need at least {2 * max(n_components, n_bins, 10)} reference images, got {n}")
        if not 0 < anomaly_quantile < 1:
            raise ValueError("anomaly_quantile must be in (0, 1)")
        shape = (x.shape[1], x.shape[2])
        rng = np.random.default_rng(seed)
        idx = rng.permutation(n)[: min(n, max_images)]
        flat = x[idx].reshape(len(idx), -1)

        mean_f, ink_f = _features(flat)
        mean_edges, mean_shares = _quantile_bins(mean_f, n_bins)
        ink_edges, ink_shares = _quantile_bins(ink_f, n_bins)

        half = len(flat) // 2
        fit_part, held_out = flat[:half] / 255.0, flat[half:] / 255.0
        pixel_mean = fit_part.mean(axis=0)
        centred = fit_part - pixel_mean
        # The principal directions are the right singular vectors of the centred data, equally the singular
        # vectors of its covariance; the 784×784 covariance is far cheaper to decompose than N×784 data.
        cov = centred.T @ centred / (len(centred) - 1)
        _, _, vt = np.linalg.svd(cov, hermitian=True)
        components = vt[: min(n_components, vt.shape[0])]
        proj = centred @ components.T
        proj_mean = proj.mean(axis=0)
        proj_cov = np.atleast_2d(np.cov(proj, rowvar=False))
        ref = cls(
            mean_edges=mean_edges,
            mean_shares=mean_shares,
            ink_edges=ink_edges,
            ink_shares=ink_shares,
            pixel_mean=pixel_mean,
            components=components,
            proj_mean=proj_mean,
            proj_cov=proj_cov,
            distance_scale=1.0,  # the three scales are replaced below, once distances can be computed
            residual_scale=1.0,
            anomaly_threshold=1.0,
            anomaly_quantile=anomaly_quantile,
            image_shape=shape,
            n_reference=len(flat),
        )
        dist, resid = ref._distances(held_out)
        object.__setattr__(ref, "distance_scale", _positive(float(np.quantile(dist, anomaly_quantile))))
        object.__setattr__(ref, "residual_scale", _positive(float(np.quantile(resid, anomaly_quantile))))
        score = ref._combine(dist, resid)
        object.__setattr__(ref, "anomaly_threshold", float(np.quantile(score, anomaly_quantile)))
        return ref

    def score(self, images: np.ndarray) -> np.ndarray:
        """Per image: ``[mean intensity, ink ratio, anomaly score]`` as an ``N×3`` float array."""
        x = _as_images(images, self.image_shape)
        flat = x.reshape(len(x), -1)
        mean_f, ink_f = _features(flat)
        dist, resid = self._distances(flat / 255.0)
        return np.column_stack([mean_f, ink_f, self._combine(dist, resid)])

    def mahalanobis(self, images: np.ndarray) -> np.ndarray:
        """The Mahalanobis distance of each image's projection under the reference Gaussian."""
        x = _as_images(images, self.image_shape)
        return self._distances(x.reshape(len(x), -1) / 255.0)[0]

    def _distances(self, flat01: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mahalanobis distance in the projection and norm of the reconstruction residual, per image."""
        centred = flat01 - self.pixel_mean
        proj = centred @ self.components.T
        d = proj - self.proj_mean
        dist = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, self._precision, d), 0.0))
        resid = np.linalg.norm(centred - proj @ self.components, axis=1)
        return dist, resid

    def _combine(self, dist: np.ndarray, resid: np.ndarray) -> np.ndarray:
        return np.maximum(dist / self.distance_scale, resid / self.residual_scale)

    # --- files: numeric arrays and plain JSON only, never pickle -----------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (lists of floats)."""
        return {
            "format_version": FORMAT_VERSION,
            "mean_edges": self.mean_edges.tolist(),
            "mean_shares": self.mean_shares.tolist(),
            "ink_edges": self.ink_edges.tolist(),
            "ink_shares": self.ink_shares.tolist(),
            "pixel_mean": self.pixel_mean.tolist(),
            "components": self.components.tolist(),
            "proj_mean": self.proj_mean.tolist(),
            "proj_cov": self.proj_cov.tolist(),
            "distance_scale": self.distance_scale,
            "residual_scale": self.residual_scale,
            "anomaly_threshold": self.anomaly_threshold,
            "anomaly_quantile": self.anomaly_quantile,
            "image_shape": list(self.image_shape),
            "n_reference": self.n_reference,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DriftReference:
        version = int(data.get("format_version", 0))
        if version != FORMAT_VERSION:
            raise ValueError(
                f"unsupported drift reference format_version {version} (expected {FORMAT_VERSION})"
            )
        missing = [k for k in _ARRAY_FIELDS + _SCALAR_FIELDS if k not in data]
        if missing:
            raise ValueError(f"drift reference lacks {', '.join(missing)}")
        kwargs: dict[str, Any] = {k: np.asarray(data[k], dtype=np.float64) for k in _ARRAY_FIELDS}
        for key in ("distance_scale", "residual_scale", "anomaly_threshold"):
            kwargs[key] = float(data[key])
        kwargs["anomaly_quantile"] = float(data["anomaly_quantile"])
        kwargs["image_shape"] = tuple(int(v) for v in data["image_shape"])
        kwargs["n_reference"] = int(data["n_reference"])
        kwargs["components"] = np.atleast_2d(kwargs["components"])
        kwargs["proj_cov"] = np.atleast_2d(kwargs["proj_cov"])
        return cls(**kwargs)

    def save(self, path: str | Path) -> Path:
        """Write to ``path``: ``.json`` as JSON, anything else as ``.npz`` (numeric arrays only)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".json":
            path.write_text(json.dumps(self.to_dict()), encoding="utf-8")
            return path
        data = self.to_dict()
        arrays = {k: np.asarray(data[k], dtype=np.float64) for k in _ARRAY_FIELDS}
        arrays["meta"] = np.array(
            [
                FORMAT_VERSION,
                self.distance_scale,
                self.residual_scale,
                self.anomaly_threshold,
                self.anomaly_quantile,
                *self.image_shape,
                self.n_reference,
            ],
            dtype=np.float64,
        )
        with path.open(
            "wb"
        ) as fh:  # an open handle: np.savez would otherwise append ".npz" to other suffixes
            np.savez(fh, **arrays)  # type: ignore[arg-type]
        return path

    @classmethod
    def load(cls, path: str | Path) -> DriftReference:
        """Read a file written by :meth:`save` (``allow_pickle=False``: a reference file cannot run code)."""
        path = Path(path)
        if path.suffix == ".json":
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in (*_ARRAY_FIELDS, "meta") if k not in archive.files]
            if missing:
                raise ValueError(f"{path} lacks {', '.join(missing)} (not a drift reference)")
            data: dict[str, Any] = {k: archive[k] for k in _ARRAY_FIELDS}
            meta = archive["meta"]
        if meta.shape != (8,):
            raise ValueError(f"{path}: malformed meta array {meta.shape}")
        data.update(
            format_version=int(meta[0]),
            distance_scale=float(meta[1]),
            residual_scale=float(meta[2]),
            anomaly_threshold=float(meta[3]),
            anomaly_quantile=float(meta[4]),
            image_shape=(int(meta[5]), int(meta[6])),
            n_reference=int(meta[7]),
        )
        return cls.from_dict(data)


_ARRAY_FIELDS = (
    "mean_edges",
    "mean_shares",
    "ink_edges",
    "ink_shares",
    "pixel_mean",
    "components",
    "proj_mean",
    "proj_cov",
)
_SCALAR_FIELDS = (
    "distance_scale",
    "residual_scale",
    "anomaly_threshold",
    "anomaly_quantile",
    "image_shape",
    "n_reference",
)


class DriftMonitor:
    """Scores live images into a bounded window and reports drift against a :class:`DriftReference`.

    Only three floats per image are kept (mean intensity, ink ratio, distance), in a ring buffer of ``window``
    images, so memory is bounded and the report reflects recent traffic. Thread-safe: the gateway may call
    :meth:`update` from several request handlers while ``/metrics`` calls :meth:`report`.
    """

    def __init__(
        self, reference: DriftReference, thresholds: DriftThresholds | None = None, window: int = 2000
    ):
        if window < 1:
            raise ValueError("window must be >= 1")
        self.reference = reference
        self.thresholds = thresholds or DriftThresholds()
        self.window = int(window)
        self._buf = np.zeros((self.window, 3), dtype=np.float64)
        self._next = 0
        self._count = 0
        self._lock = threading.Lock()

    @property
    def n_images(self) -> int:
        return self._count

    def update(self, images: np.ndarray) -> None:
        """Add live images (``N×H×W``, ``N×pixels`` or one ``H×W`` image; 0–255 scale, any numeric dtype)."""
        scores = self.reference.score(images)[-self.window :]
        with self._lock:
            n = len(scores)
            pos = (self._next + np.arange(n)) % self.window
            self._buf[pos] = scores
            self._next = int((self._next + n) % self.window)
            self._count = min(self.window, self._count + n)

    def reset(self) -> None:
        with self._lock:
            self._next = 0
            self._count = 0

    def report(self) -> DriftReport:
        """PSI of both features and the anomaly share of the window, and whether that is drift."""
        with self._lock:
            live = self._buf[: self._count].copy()
        ref, t = self.reference, self.thresholds
        n = len(live)
        if n == 0:
            return DriftReport(None, None, None, False, ("no live images yet",), 0)
        psi_mean = psi(ref.mean_shares, _bin_shares(live[:, 0], ref.mean_edges))
        psi_ink = psi(ref.ink_shares, _bin_shares(live[:, 1], ref.ink_edges))
        share = float((live[:, 2] > ref.anomaly_threshold).mean())  # strictly beyond, as in the reference
        if n < t.min_images:
            return DriftReport(
                psi_mean,
                psi_ink,
                share,
                False,
                (f"only {n} live images < {t.min_images} needed to judge drift",),
                n,
            )
        reasons = []
        if psi_mean > t.psi:
            reasons.append(f"mean intensity PSI {psi_mean:.3f} > {t.psi:g}")
        if psi_ink > t.psi:
            reasons.append(f"ink ratio PSI {psi_ink:.3f} > {t.psi:g}")
        if share > t.anomaly_share:
            reasons.append(
                f"{share:.1%} of live images beyond the reference's {ref.anomaly_quantile:.0%} anomaly line "
                f"(> {t.anomaly_share:.0%})"
            )
        if not reasons:
            reasons.append(
                f"no drift over {n} images (PSI mean {psi_mean:.3f}, ink {psi_ink:.3f}; "
                f"anomalies {share:.1%})"
            )
            return DriftReport(psi_mean, psi_ink, share, False, tuple(reasons), n)
        return DriftReport(psi_mean, psi_ink, share, True, tuple(reasons), n)


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of ``actual`` shares against ``expected`` shares (same bins)."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), PSI_FLOOR)
    a = np.maximum(np.asarray(actual, dtype=np.float64), PSI_FLOOR)
    return float(((a - e) * np.log(a / e)).sum())


def _positive(value: float) -> float:
    """A scale for division: a degenerate reference (all images alike) must not divide by zero."""
    return value if value > 1e-12 else 1e-12


def _features(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean intensity (0–255) and ink ratio per flattened image."""
    return flat.mean(axis=1, dtype=np.float64), (flat > INK_THRESHOLD).mean(axis=1)


def _quantile_bins(values: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Interior edges at the reference's quantiles (ties merged) and the reference's share per bin."""
    edges = np.unique(np.quantile(values, np.linspace(0, 1, n_bins + 1)[1:-1]))
    return edges, _bin_shares(values, edges)


def _bin_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    # side="right": a value equal to an edge goes above it, the same way for reference and live values.
    idx = np.searchsorted(edges, values, side="right")
    return np.bincount(idx, minlength=edges.size + 1) / max(len(values), 1)


def _as_images(images: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Images as an ``N×H×W`` array on the 0–255 scale; a clear error for anything else."""
    x = np.asarray(images)
    if x.dtype.kind not in "uif":
        raise ValueError(f"images must be numeric, got dtype {x.dtype}")
    if shape is not None:
        if x.ndim == 2 and x.shape == shape:
            x = x[None]
        elif x.ndim == 2 and x.shape[1] == shape[0] * shape[1]:
            x = x.reshape(len(x), *shape)
        if x.ndim != 3 or x.shape[1:] != shape:
            raise ValueError(f"images must be N×{shape[0]}×{shape[1]}, got shape {np.asarray(images).shape}")
    elif x.ndim != 3:
        raise ValueError(f"images must be N×H×W, got shape {x.shape}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ValueError("images contain NaN or inf")
    return x
