"""The gateway's Prometheus metrics, in a registry per gateway so several gateways can share a process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Buckets fine enough at the low end that a p99 of a few milliseconds is resolved.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)


class GatewayMetrics:
    """Per version and variant: requests, errors, fallbacks, latency, predicted classes, feedback."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("version", "variant")
        r = self.registry
        self.requests = Counter("mlcd_gateway_requests", "Predict requests per model version and variant", labels, registry=r)
        self.errors = Counter("mlcd_gateway_errors", "Predict requests the model failed", labels, registry=r)
        self.fallbacks = Counter(
            "mlcd_gateway_fallbacks", "Canary failures answered by the stable model", labels, registry=r
        )
        self.latency = Histogram(
            "mlcd_gateway_request_latency_seconds",
            "Time from routing to the model's answer",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "mlcd_gateway_predictions", "Predicted classes (one per image)", (*labels, "predicted_class"), registry=r
        )
        self.feedback = Counter("mlcd_gateway_feedback", "Feedback labels received", (*labels, "correct"), registry=r)
        self.accuracy = Gauge("mlcd_gateway_live_accuracy", "Accuracy on feedback labels so far", labels, registry=r)
        self.rejected = Counter("mlcd_gateway_rejected", "Requests refused with a 4xx", ("status",), registry=r)
        # A 0-1 ratio (Prometheus convention: ratios, not percents); the router API keeps integer percents.
        self.weight = Gauge("mlcd_gateway_canary_weight", "Share of traffic routed to the canary (0-1)", registry=r)
        self.holdback_weight = Gauge("mlcd_gateway_holdback_weight",
                                     "Share of traffic routed to the holdback, the previous champion (0-1)", registry=r)
        self.model_info = Gauge("mlcd_gateway_model_info", "1 for each served (variant, version)", labels, registry=r)
        self._feedback_counts: dict[tuple[str, str], list[int]] = {}
        # Served but not evidence (mlcd.serving.evidence): pinned versions, sticky clients, clients over their
        # share. The families above stay "randomised traffic only", which is what the analysis reads.
        why = (*labels, "reason")
        self.unrandomised_requests = Counter(
            "mlcd_gateway_unrandomised_requests", "Requests served but not counted as canary evidence", why,
            registry=r)
        self.unrandomised_errors = Counter(
            "mlcd_gateway_unrandomised_errors", "Failed requests not counted as canary evidence", why, registry=r)
        self.unrandomised_feedback = Counter(
            "mlcd_gateway_unrandomised_feedback", "Feedback labels on predictions that were not evidence",
            (*why, "correct"), registry=r)
        # Input drift of live traffic against the training data (set only when the gateway monitors drift).
        self.drift_psi = Gauge("mlcd_gateway_drift_psi", "Population stability index of live inputs vs training",
                               ("feature",), registry=r)
        self.drift_anomaly_share = Gauge("mlcd_gateway_drift_anomaly_share",
                                         "Share of live images beyond the reference's anomaly line", registry=r)
        self.drift_drifted = Gauge("mlcd_gateway_drift_drifted", "1 when the live window drifted", registry=r)
        self.drift_images = Gauge("mlcd_gateway_drift_images", "Live images in the drift window", registry=r)

    def set_drift(self, report: object) -> None:
        """Copy a :class:`mlcd.guard.drift.DriftReport` into the gauges (NaN while a value is unknown)."""
        nan = float("nan")
        psi_mean = getattr(report, "psi_mean_intensity", None)
        psi_ink = getattr(report, "psi_ink", None)
        share = getattr(report, "anomaly_share", None)
        self.drift_psi.labels("mean_intensity").set(nan if psi_mean is None else psi_mean)
        self.drift_psi.labels("ink").set(nan if psi_ink is None else psi_ink)
        self.drift_anomaly_share.set(nan if share is None else share)
        self.drift_drifted.set(1 if getattr(report, "drifted", False) else 0)
        self.drift_images.set(int(getattr(report, "n_images", 0)))

    def record_unrandomised(self, version: str, variant: str, reason: str, error: bool) -> None:
        self.unrandomised_requests.labels(version, variant, str(reason)).inc()
        if error:
            self.unrandomised_errors.labels(version, variant, str(reason)).inc()

    def record_feedback(self, version: str, variant: str, correct: bool) -> None:
        self.feedback.labels(version, variant, "true" if correct else "false").inc()
        counts = self._feedback_counts.setdefault((version, variant), [0, 0])
        counts[0] += int(correct)
        counts[1] += 1
        self.accuracy.labels(version, variant).set(counts[0] / counts[1])

    def set_served(self, served: dict[str, str | None], canary_weight: int) -> None:
        """Export what is served; ``canary_weight`` is the router's integer percent, exported as a 0-1 ratio."""
        self.model_info.clear()
        for variant, version in served.items():
            if version is not None:
                self.model_info.labels(version, variant).set(1)
        self.weight.set(canary_weight / 100.0)

    def set_holdback_weight(self, holdback_weight: int) -> None:
        """The holdback's integer percent, exported as a 0-1 ratio (0 when no control is held back)."""
        self.holdback_weight.set(holdback_weight / 100.0)
