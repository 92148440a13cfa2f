"""Read the gateway's ``/metrics`` and turn two scrapes into one window's statistics per variant.

The gateway exports cumulative counters (Prometheus style); an analysis window is the difference between a
scrape at its start and one at its end. A counter that went down means the gateway restarted in between, and
the later scrape alone is the window. The rollback guard reuses these helpers.
"""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mlcd.rollout.spec import VariantStats

PREFIX = "mlcd_gateway_"


@dataclass
class SeriesCounters:
    """Cumulative counters for one (variant, version) pair."""

    requests: float = 0.0
    errors: float = 0.0
    fallbacks: float = 0.0
    latency_count: float = 0.0
    latency_sum: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound → cumulative count
    classes: dict[int, float] = field(default_factory=dict)
    feedback_correct: float = 0.0
    feedback_total: float = 0.0

    def __add__(self, other: SeriesCounters) -> SeriesCounters:
        """The counters of two periods together (a window stretched over several polls, a whole rollout)."""
        a, b = self, other
        return SeriesCounters(
            requests=a.requests + b.requests,
            errors=a.errors + b.errors,
            fallbacks=a.fallbacks + b.fallbacks,
            latency_count=a.latency_count + b.latency_count,
            latency_sum=a.latency_sum + b.latency_sum,
            buckets={k: a.buckets.get(k, 0.0) + b.buckets.get(k, 0.0) for k in set(a.buckets) | set(b.buckets)},
            classes={k: a.classes.get(k, 0.0) + b.classes.get(k, 0.0) for k in set(a.classes) | set(b.classes)},
            feedback_correct=a.feedback_correct + b.feedback_correct,
            feedback_total=a.feedback_total + b.feedback_total,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "fallbacks": self.fallbacks,
            "latency_count": self.latency_count,
            "latency_sum": self.latency_sum,
            "buckets": {repr(k): v for k, v in self.buckets.items()},
            "classes": {str(k): v for k, v in self.classes.items()},
            "feedback_correct": self.feedback_correct,
            "feedback_total": self.feedback_total,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SeriesCounters:
        return cls(
            requests=float(data.get("requests", 0)),
            errors=float(data.get("errors", 0)),
            fallbacks=float(data.get("fallbacks", 0)),
            latency_count=float(data.get("latency_count", 0)),
            latency_sum=float(data.get("latency_sum", 0)),
            buckets={float(k): float(v) for k, v in data.get("buckets", {}).items()},
            classes={int(k): float(v) for k, v in data.get("classes", {}).items()},
            feedback_correct=float(data.get("feedback_correct", 0)),
            feedback_total=float(data.get("feedback_total", 0)),
        )


Snapshot = dict[tuple[str, str], SeriesCounters]


def parse_metrics(text: str) -> Snapshot:
    """Parse the exposition text into counters keyed by ``(variant, version)``."""
    from prometheus_client.parser import text_string_to_metric_families

    return snapshot_from_families(text_string_to_metric_families(text))


def snapshot_from_families(families: Iterable[Any]) -> Snapshot:
    """Counters keyed by ``(variant, version)`` from metric families (parsed text, or a registry's ``collect()``)."""
    snap: Snapshot = {}

    def series(labels: Mapping[str, str]) -> SeriesCounters | None:
        if "variant" not in labels or "version" not in labels:
            return None
        return snap.setdefault((labels["variant"], labels["version"]), SeriesCounters())

    for family in families:
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, float(sample.value)
            if not name.startswith(PREFIX) or name.endswith("_created"):
                continue
            s = series(labels)
            if s is None:
                continue
            short = name[len(PREFIX) :]
            if short == "requests_total":
                s.requests += value
            elif short == "errors_total":
                s.errors += value
            elif short == "fallbacks_total":
                s.fallbacks += value
            elif short == "request_latency_seconds_bucket":
                s.buckets[float(labels["le"])] = value
            elif short == "request_latency_seconds_count":
                s.latency_count = value
            elif short == "request_latency_seconds_sum":
                s.latency_sum = value
            elif short == "predictions_total":
                s.classes[int(labels["predicted_class"])] = value
            elif short == "feedback_total":
                s.feedback_total += value
                if labels.get("correct") == "true":
                    s.feedback_correct += value
    return snap


def fetch_metrics(gateway_url: str, timeout: float = 5.0) -> Snapshot:
    """Scrape ``{gateway_url}/metrics`` (plain urllib: no client library needed in the triggerer)."""
    with urllib.request.urlopen(f"{gateway_url.rstrip('/')}/metrics", timeout=timeout) as resp:  # noqa: S310
        return parse_metrics(resp.read().decode("utf-8"))


def snapshot_to_dict(snap: Snapshot) -> dict[str, Any]:
    """JSON-able form (``"variant|version"`` keys) for XCom / trigger kwargs."""
    return {f"{variant}|{version}": s.to_dict() for (variant, version), s in snap.items()}


def snapshot_from_dict(data: Mapping[str, Any]) -> Snapshot:
    out: Snapshot = {}
    for key, value in data.items():
        variant, _, version = key.partition("|")
        out[(variant, version)] = SeriesCounters.from_dict(value)
    return out


def diff(before: SeriesCounters | None, after: SeriesCounters | None) -> SeriesCounters:
    """``after - before``; a counter that went down (gateway restart) makes ``after`` the whole window."""
    if after is None:
        return SeriesCounters()
    if before is None or after.requests < before.requests or after.latency_count < before.latency_count:
        return after
    return SeriesCounters(
        requests=after.requests - before.requests,
        errors=max(0.0, after.errors - before.errors),
        fallbacks=max(0.0, after.fallbacks - before.fallbacks),
        latency_count=after.latency_count - before.latency_count,
        latency_sum=max(0.0, after.latency_sum - before.latency_sum),
        buckets={le: max(0.0, v - before.buckets.get(le, 0.0)) for le, v in after.buckets.items()},
        classes={k: max(0.0, v - before.classes.get(k, 0.0)) for k, v in after.classes.items()},
        feedback_correct=max(0.0, after.feedback_correct - before.feedback_correct),
        feedback_total=max(0.0, after.feedback_total - before.feedback_total),
    )


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' ``histogram_quantile``: linear interpolation inside the bucket holding the quantile.

    Returns ``None`` with no observations, and ``inf`` when the quantile lies above the top finite bucket.
    """
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if math.isinf(bounds[-1]) else max(buckets.values())
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return prev_bound if prev_bound > 0 else math.inf
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return math.inf


def variant_stats(window: SeriesCounters) -> VariantStats:
    """The spec's view of one window of one series."""
    return VariantStats(
        requests=int(round(window.requests)),
        errors=int(round(window.errors)),
        p99_latency_s=histogram_quantile(0.99, window.buckets) if window.latency_count > 0 else None,
        latency_samples=int(round(window.latency_count)),
    )


def window_stats(before: Snapshot, after: Snapshot, variant: str, version: str | None) -> VariantStats:
    """Stats of ``variant`` serving ``version`` between two scrapes (no version → empty stats)."""
    if version is None:
        return VariantStats()
    key = (variant, str(version))
    return variant_stats(diff(before.get(key), after.get(key)))
