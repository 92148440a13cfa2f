"""Where the canary task and the guard read the gateway's counters: a :class:`MetricsProvider`.

Both consumers want the same thing from one read: the cumulative counters per ``(variant, version)``
(:data:`~mlcd.rollout.metrics.Snapshot`, which the analysis engine diffs poll by poll), which version serves as
which variant, and the canary's traffic share. That is a :class:`Scrape`. Two providers deliver it:

* :class:`GatewayMetrics` reads the gateway's own ``/metrics`` (the embedded default, one gateway serving both
  variants: ``MLCD_METRICS_PROVIDER=gateway``).
* :class:`PrometheusMetrics` asks the Prometheus HTTP API (``MLCD_METRICS_PROVIDER=prometheus``,
  ``MLCD_PROMETHEUS_URL``): on a cluster each variant is its own gateway Deployment, so no single ``/metrics``
  shows both; Prometheus scrapes every gateway pod and one instant query sums the pods' counters by
  ``variant`` / ``version`` back into the same cumulative counters.

A provider that cannot be read raises :class:`MetricsUnavailable` (one line naming the source and why). It is an
``OSError``, so every loop that already retries an unreachable gateway retries it the same way; a caller that
must fail closed catches it by name.

**Counter resets on a cluster.** A replaced pod is a new series starting at 0 and its predecessor's series goes
stale; a plain ``sum`` would then drop, and the engine would read the drop as a restart of the whole variant.
The query sums ``last_over_time(counter[lookback])`` instead: a pod that disappeared keeps contributing its final
counts for ``lookback`` (default 1 h, longer than any analysis window), so the sum stays monotonic across pod
replacements. A container restarting *in place* (same pod, same series) does reset its series; the engine's
restart rule (:func:`mlcd.rollout.metrics.diff`: a counter that went down makes the later read the interval)
covers that, as it does for a restarted single gateway.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from mlcd.rollout.metrics import PREFIX, SeriesCounters, Snapshot, snapshot_from_families

log = logging.getLogger(__name__)

GATEWAY, PROMETHEUS = "gateway", "prometheus"
PROVIDERS = (GATEWAY, PROMETHEUS)
DEFAULT_LOOKBACK = "1h"
# The label each part of the combined query carries, so one answer holds every counter family.
PART_LABEL = "mlcd_part"
# part → (metric, extra labels kept besides variant/version)
COUNTER_PARTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "requests": (f"{PREFIX}requests_total", ()),
    "errors": (f"{PREFIX}errors_total", ()),
    "fallbacks": (f"{PREFIX}fallbacks_total", ()),
    "latency_bucket": (f"{PREFIX}request_latency_seconds_bucket", ("le",)),
    "latency_count": (f"{PREFIX}request_latency_seconds_count", ()),
    "latency_sum": (f"{PREFIX}request_latency_seconds_sum", ()),
    "predictions": (f"{PREFIX}predictions_total", ("predicted_class",)),
    "feedback": (f"{PREFIX}feedback_total", ("correct",)),
}
SERVED_PART, WEIGHT_PART = "served", "weight"
_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
_MATCHER = re.compile(r'^\s*[A-Za-z_][A-Za-z0-9_]*\s*(=|!=|=~|!~)\s*"(?:[^"\\]|\\.)*"\s*$')


class MetricsUnavailable(OSError):  # noqa: N818 - the name the guard and the canary task catch
    """The metrics source could not be read (unreachable, refused, or answered something unreadable)."""


@dataclass(frozen=True)
class Scrape:
    """One read of the metrics: the counters, which version serves as which variant, the canary's share."""

    counters: Snapshot
    served: dict[str, str]  # variant → version
    canary_weight: float = 0.0  # 0–1 (Prometheus ratio convention)
    holdback_weight: float = 0.0  # 0–1: the previous champion's share after a promotion (the bake's control)


@runtime_checkable
class MetricsProvider(Protocol):
    """Reads the gateways' counters once; ``source`` names where from (for log lines and errors)."""

    @property
    def source(self) -> str:
        """Where the counters come from, e.g. ``prometheus http://prometheus:9090``."""
        ...

    def scrape(self) -> Scrape:
        """The cumulative counters, the served versions and the canary weight now; :class:`MetricsUnavailable`
        when the source cannot be read."""
        ...


# --- the gateway's own /metrics --------------------------------------------------------------------------------


def parse_scrape(text: str) -> Scrape:
    """Counters (:func:`mlcd.rollout.metrics.parse_metrics`) plus ``model_info`` and the canary weight ratio."""
    from prometheus_client.parser import text_string_to_metric_families

    return scrape_from_families(list(text_string_to_metric_families(text)))


def scrape_from_families(families: list[Any]) -> Scrape:
    """One pass over metric families (parsed text, or a registry's ``collect()``): counters, served, weight."""
    served: dict[str, str] = {}
    weight = held = 0.0
    for family in families:
        for sample in family.samples:
            if sample.name == "mlcd_gateway_model_info" and sample.value == 1:
                served[sample.labels["variant"]] = sample.labels["version"]
            elif sample.name == "mlcd_gateway_canary_weight":
                weight = float(sample.value)
            elif sample.name == "mlcd_gateway_holdback_weight":
                held = float(sample.value)
    for name, value in (("canary", weight), ("holdback", held)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"mlcd_gateway_{name}_weight must be a 0-1 ratio, got {value}")
    return Scrape(snapshot_from_families(families), served, weight, held)


def fetch_scrape(gateway_url: str, timeout: float = 5.0) -> Scrape:
    """``GET {gateway_url}/metrics`` (plain urllib: no client library in the triggerer)."""
    return GatewayMetrics(gateway_url, timeout).scrape()


@dataclass(frozen=True)
class GatewayMetrics:
    """The gateway's own ``/metrics`` (one gateway serving both variants: the embedded default).

    Not to be confused with :class:`mlcd.serving.metrics.GatewayMetrics`, the registry the gateway exports.
    """

    url: str
    timeout: float = 5.0
    token: str | None = None  # sent as a bearer token: a gateway with MLCD_METRICS_TOKEN protects /metrics (#23)

    @property
    def source(self) -> str:
        return f"gateway {self.url.rstrip('/')}/metrics"

    def scrape(self) -> Scrape:
        req = urllib.request.Request(f"{self.url.rstrip('/')}/metrics")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                text = resp.read().decode("utf-8")
        except (OSError, ValueError) as exc:  # URLError, refused, timeout, a malformed URL
            raise MetricsUnavailable(f"{self.source} unreadable: {exc}") from exc
        try:
            return parse_scrape(text)
        except (ValueError, KeyError, TypeError) as exc:
            raise MetricsUnavailable(f"{self.source} answered unreadable metrics: {exc}") from exc


# --- the Prometheus HTTP API -----------------------------------------------------------------------------------


def check_selector(selector: str) -> str:
    """Extra label matchers (``namespace="mlcd",job="gateways"``) without braces; refused unless well formed."""
    selector = selector.strip().strip("{}").strip()
    if not selector:
        return ""
    for part in _split_matchers(selector):
        if not _MATCHER.match(part):
            raise ValueError(f"MLCD_PROMETHEUS_SELECTOR: {part.strip()!r} is not a label matcher like "
                             'namespace="mlcd"')
    return selector


def _split_matchers(selector: str) -> list[str]:
    """Split on commas outside quoted values."""
    parts, current, quoted, escaped = [], "", False, False
    for ch in selector:
        if ch == "," and not quoted:
            parts.append(current)
            current = ""
            continue
        current += ch
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
    parts.append(current)
    return [p for p in parts if p.strip()]


def build_query(selector: str = "", lookback: str = DEFAULT_LOOKBACK) -> str:
    """One PromQL instant query for every counter family, the served versions and the canary weight.

    Each part is tagged with ``mlcd_part`` (``label_replace`` with an empty source) and the parts are joined with
    ``or``: their label sets differ in that tag, so the union keeps every element, and all are evaluated at one
    timestamp (histogram buckets, count and sum agree with each other).
    """
    if not _DURATION.match(lookback):
        raise ValueError(f"lookback {lookback!r} is not a Prometheus duration like 1h or 90m")
    sel = check_selector(selector)
    braces = f"{{{sel}}}" if sel else ""
    parts = []
    for part, (metric, extra) in COUNTER_PARTS.items():
        by = ", ".join(("variant", "version", *extra))
        expr = f"sum by ({by}) (last_over_time({metric}{braces}[{lookback}]))"
        parts.append(f'label_replace({expr}, "{PART_LABEL}", "{part}", "", "")')
    # What serves now, not within the lookback: a plain instant selector (stale series drop out).
    parts.append(f'label_replace(max by (variant, version) ({PREFIX}model_info{braces}) == 1, "{PART_LABEL}", '
                 f'"{SERVED_PART}", "", "")')
    parts.append(f'label_replace(max({PREFIX}canary_weight{braces}), "{PART_LABEL}", "{WEIGHT_PART}", "", "")')
    return " or ".join(parts)


def _number(value: Any) -> float:
    return float(value)  # Prometheus sends sample values as strings: "12", "NaN", "+Inf"


def _version_key(version: str) -> tuple[int, float, str]:
    try:
        return (1, float(version), version)
    except ValueError:
        return (0, 0.0, version)


def parse_query_response(body: Mapping[str, Any], source: str = "prometheus") -> Scrape:
    """A :class:`Scrape` from the ``/api/v1/query`` answer to :func:`build_query` (a ``vector`` result).

    An answer with ``status`` other than ``success``, or a result that is not a vector, raises
    :class:`MetricsUnavailable` with Prometheus' own ``errorType: error``.
    """
    if body.get("status") != "success":
        raise MetricsUnavailable(f"{source}: query failed: {body.get('errorType', 'error')}: "
                                 f"{body.get('error', body.get('status'))}")
    data = body.get("data") or {}
    if data.get("resultType") != "vector":
        raise MetricsUnavailable(f"{source}: expected a vector result, got {data.get('resultType')!r}")
    snap: Snapshot = {}
    served: dict[str, list[str]] = {}
    weight = 0.0
    for item in data.get("result") or []:
        labels, (_, raw) = item["metric"], item["value"]
        part, value = labels.get(PART_LABEL), _number(raw)
        if part == WEIGHT_PART:
            weight = 0.0 if math.isnan(value) else value
            continue
        if "variant" not in labels or "version" not in labels:
            continue  # a gateway series without its variant/version: nothing to attribute it to
        if part == SERVED_PART:
            served.setdefault(labels["variant"], []).append(labels["version"])
            continue
        s = snap.setdefault((labels["variant"], labels["version"]), SeriesCounters())
        _add(s, str(part), labels, value)
    if not 0.0 <= weight <= 1.0:
        raise MetricsUnavailable(f"{source}: mlcd_gateway_canary_weight must be a 0-1 ratio, got {weight}")
    # Two versions of one variant serve at once only within a Deployment's rolling update: the newer one is
    # the one the variant is moving to (the router's own record wins where one is wired, see PrometheusMetrics).
    chosen = {variant: max(versions, key=_version_key) for variant, versions in served.items()}
    return Scrape(snap, chosen, weight)


def _add(s: SeriesCounters, part: str, labels: Mapping[str, str], value: float) -> None:
    if part == "requests":
        s.requests += value
    elif part == "errors":
        s.errors += value
    elif part == "fallbacks":
        s.fallbacks += value
    elif part == "latency_bucket":
        le = float(labels["le"])
        s.buckets[le] = s.buckets.get(le, 0.0) + value
    elif part == "latency_count":
        s.latency_count += value
    elif part == "latency_sum":
        s.latency_sum += value
    elif part == "predictions":
        k = int(labels["predicted_class"])
        s.classes[k] = s.classes.get(k, 0.0) + value
    elif part == "feedback":
        s.feedback_total += value
        if labels.get("correct") == "true":
            s.feedback_correct += value


@dataclass(frozen=True)
class PrometheusMetrics:
    """The gateways' counters through the Prometheus HTTP API (one instant query per read).

    Args:
        url: Prometheus' base URL (``http://prometheus.monitoring:9090``); ``/api/v1/query`` is appended.
        selector: extra label matchers for every series (``namespace="mlcd"``), so two installs sharing one
            Prometheus never mix their counts.
        lookback: how long a vanished pod's final counts stay in the sums (see the module docstring).
        timeout: seconds per HTTP call.
        routes: what serves where, read from the router instead of the gateways' ``model_info`` (a Kubernetes
            install: a Deployment keeps serving a version the HTTPRoute no longer routes to, e.g. a rolled-back
            canary at weight 0, so only the route says what users are served). ``None``: from ``model_info`` and
            the gateways' own weight gauge, which is right for one gateway serving both variants (docker-compose)
            but 0 for gateways pinned to one variant each: those need the route for the weight.
        clock: epoch seconds for the query's evaluation time.
    """

    url: str
    selector: str = ""
    lookback: str = DEFAULT_LOOKBACK
    timeout: float = 5.0
    routes: Callable[[], Any] | None = None
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        build_query(self.selector, self.lookback)  # refuse a bad selector or lookback now, not at the first poll

    @property
    def source(self) -> str:
        return f"prometheus {self.url.rstrip('/')}"

    @property
    def query(self) -> str:
        return build_query(self.selector, self.lookback)

    def request_url(self, at: float) -> str:
        params = urllib.parse.urlencode({"query": self.query, "time": f"{at:.3f}"})
        return f"{self.url.rstrip('/')}/api/v1/query?{params}"

    def scrape(self) -> Scrape:
        url = self.request_url(self.clock())
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as resp:  # noqa: S310 - configured URL
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            # Prometheus answers 400/422/503 with its JSON error body: pass its errorType and message on.
            raw = exc.read()
            try:
                parse_query_response(json.loads(raw), self.source)
            except MetricsUnavailable as inner:
                raise MetricsUnavailable(f"{inner} (HTTP {exc.code})") from exc
            except ValueError:
                pass
            raise MetricsUnavailable(f"{self.source} answered HTTP {exc.code}: {raw[:200]!r}") from exc
        except (OSError, ValueError) as exc:
            raise MetricsUnavailable(f"{self.source} unreachable: {exc}") from exc
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise MetricsUnavailable(f"{self.source} answered something that is not JSON: {exc}") from exc
        try:
            scrape = parse_query_response(body, self.source)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise MetricsUnavailable(f"{self.source} answered an unexpected shape: {exc}") from exc
        if self.routes is None:
            return scrape
        try:
            status = self.routes()
        except Exception as exc:  # noqa: BLE001 - the router's own error, with its message, as one unreadable read
            raise MetricsUnavailable(f"{self.source}: the routes could not be read: {exc}") from exc
        served = {"stable": str(status.stable)} if status.stable else {}
        if status.canary:
            served["canary"] = str(status.canary)
        held = getattr(status, "holdback", None)
        if held:
            served["holdback"] = str(held)
        return Scrape(scrape.counters, served, float(status.canary_weight) / 100.0,
                      float(getattr(status, "holdback_weight", 0) or 0) / 100.0 if held else 0.0)


# --- which provider ----------------------------------------------------------------------------------------------


def provider_from_settings(gateway_url: str | None = None) -> MetricsProvider:
    """The provider ``MLCD_METRICS_PROVIDER`` names (``gateway``, default, or ``prometheus``).

    ``gateway_url`` is the gateway to read in ``gateway`` mode (default ``MLCD_GATEWAY_URL``). In ``prometheus``
    mode with ``MLCD_ROUTER_BACKEND=kubernetes`` the served versions and weight come from the HTTPRoute.
    """
    from mlcd.settings import get_settings

    s = get_settings()
    if s.metrics_provider == GATEWAY:
        return GatewayMetrics(gateway_url or s.gateway_url, token=s.metrics_token or s.admin_token)
    if s.metrics_provider != PROMETHEUS:
        raise ValueError(f"unknown MLCD_METRICS_PROVIDER {s.metrics_provider!r} ({' or '.join(PROVIDERS)})")
    if not s.prometheus_url:
        raise ValueError("MLCD_METRICS_PROVIDER=prometheus needs MLCD_PROMETHEUS_URL (Prometheus' base URL)")
    routes = None
    if s.router_backend == "kubernetes":
        from mlcd.rollout.router import router_from_settings

        routes = router_from_settings(gateway_url).get_routes
    return PrometheusMetrics(s.prometheus_url, s.prometheus_selector, s.prometheus_lookback, routes=routes)


def _cached_reader() -> Callable[[str], Scrape]:
    """``gateway_url → Scrape`` with one provider per URL (a Kubernetes router is built once, not per poll)."""
    providers: dict[str, MetricsProvider] = {}

    def read(gateway_url: str) -> Scrape:
        if gateway_url not in providers:
            providers[gateway_url] = provider_from_settings(gateway_url)
        return providers[gateway_url].scrape()

    return read


def scrape_from_settings() -> Callable[[str], Scrape]:
    """``url → Scrape`` for :class:`mlcd.guard.watch.Guard` (the URL names the gateway in ``gateway`` mode).

    A misconfigured provider (unknown name, no Prometheus URL, bad selector) raises ``ValueError`` here, once.
    """
    provider_from_settings()
    return _cached_reader()


def counters_from_settings() -> Callable[[str], Snapshot]:
    """``url → Snapshot`` for :class:`mlcd.rollout.canary.CanaryRollout` and its window trigger."""
    provider_from_settings()
    read = _cached_reader()
    return lambda gateway_url: read(gateway_url).counters
