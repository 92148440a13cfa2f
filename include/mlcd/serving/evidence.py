"""What counts as canary evidence: only traffic the platform itself randomised, no client carrying a window.

A verdict compares variants on traffic served in the same interval; it is only sound when the *platform* chose
which variant answered each request. A client that names a version (``/v2/models/{m}/versions/{v}/infer``) or
brings a sticky ``client_id`` is served as asked but chose its own treatment, so its requests are recorded in
separate metric families (``mlcd_gateway_unrandomised_*{reason}``) and never in the evidence families
(``mlcd_gateway_requests`` …) that the analysis reads. Randomised traffic is evidence only up to a bounded share
per client (its remote address, or the first untrusted hop of ``X-Forwarded-For`` behind a trusted proxy): one
client sending chosen inputs cannot carry a check, nor the drift window. Beyond its share a client is served and
counted as ``over_share``.

Sticky buckets are an HMAC of the client id under a secret key, so a client cannot pick (or compute) its bucket.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from enum import StrEnum

BUCKETS = 10_000
# The platform's own traffic on this host (the demo's load, the rehearsal): a gateway bound to loopback has no
# anonymous remote clients, and a bound on one address would throttle the only client a laptop has.
LOOPBACK = ("127.0.0.0/8", "::1/128")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Unrandomised(StrEnum):
    """Why a served request is not canary evidence (the ``reason`` label of ``mlcd_gateway_unrandomised_*``)."""

    PINNED = "pinned"  # the client named the version
    STICKY = "sticky"  # the client brought a client_id: its variant follows from a key it chose
    OVER_SHARE = "over_share"  # the client already carries its bounded share of the window's evidence


def sticky_key(secret: str | None, fallback: bytes) -> bytes:
    """The sticky-bucket key: derived from the configured secret (replicas agree), else ``fallback``."""
    if secret:
        return hashlib.sha256(b"mlcd-sticky-bucket:" + secret.encode()).digest()
    return fallback


def sticky_bucket(client_id: str, key: bytes) -> int:
    """A stable bucket in 0..9999 for a client, unpredictable without ``key``."""
    digest = hmac.new(key, client_id.encode("utf-8"), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs (or single addresses) as networks; a malformed one raises ``ValueError`` naming it."""
    nets = []
    for raw in values:
        raw = raw.strip()
        if not raw:
            continue
        try:
            nets.append(ipaddress.ip_network(raw, strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or CIDR: {raw!r}") from None
    return tuple(nets)


def _within(address: str, nets: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in nets)


def client_address(remote: str | None, headers: Mapping[str, str], trusted_proxies: tuple[Network, ...]) -> str:
    """The address a request comes from: the peer, or behind trusted proxies the first untrusted hop.

    ``X-Forwarded-For`` is read only when the peer is a trusted proxy, from the right (each proxy appends), so a
    client cannot name an address by writing the header itself.
    """
    peer = remote or "unknown"
    if not trusted_proxies or not _within(peer, trusted_proxies):
        return peer
    hops = [h.strip() for h in headers.get("x-forwarded-for", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _within(hop, trusted_proxies):
            return hop
    return hops[0] if hops else peer


class ShareBound:
    """Admit a client's images into a sliding window only while it holds at most ``max_share`` of it.

    A request of ``n`` images is admitted when the client's count in the window plus ``n`` stays within
    ``floor`` plus ``max_share`` of the window's admitted total plus ``n``: the floor lets a quiet deployment
    (or the first seconds of a window) collect evidence, the share bounds a loud client however much it sends.
    Addresses in ``exempt`` are not bounded.

    Args:
        window_s: the window, in seconds (about an analysis interval).
        max_share: the most any one client may carry of a window, 0 < max_share <= 1 (1 disables the bound).
        floor: images per window a client may contribute beyond its share.
        exempt: networks whose clients are not bounded (by default loopback: the platform's own traffic).
    """

    def __init__(self, window_s: float = 60.0, max_share: float = 0.1, floor: int = 64,
                 exempt: tuple[Network, ...] = (), clock: Callable[[], float] | None = None) -> None:
        if not 0 < max_share <= 1:
            raise ValueError(f"max_share must be in (0, 1], got {max_share}")
        if window_s <= 0 or floor < 0:
            raise ValueError(f"window_s must be > 0 and floor >= 0, got {window_s}, {floor}")
        self.window_s, self.max_share, self.floor, self.exempt = window_s, max_share, floor, exempt
        self._clock = clock or time.monotonic
        self._events: deque[tuple[float, str, int]] = deque()
        self._by_client: Counter[str] = Counter()
        self._total = 0
        self._lock = threading.Lock()

    def _expire(self, now: float) -> None:
        horizon = now - self.window_s
        while self._events and self._events[0][0] < horizon:
            _, client, n = self._events.popleft()
            self._total -= n
            self._by_client[client] -= n
            if self._by_client[client] <= 0:
                del self._by_client[client]

    def admit(self, client: str, n: int) -> bool:
        """Whether ``n`` images of ``client`` count now; admitted images are added to the window."""
        if self.max_share >= 1 or (self.exempt and _within(client, self.exempt)):
            return True
        with self._lock:
            now = self._clock()
            self._expire(now)
            mine = self._by_client.get(client, 0) + n
            if mine > self.floor + self.max_share * (self._total + n):
                return False
            self._events.append((now, client, n))
            self._by_client[client] += n
            self._total += n
            return True

    def shares(self) -> dict[str, int]:
        """Images per client in the current window (for tests and the bench)."""
        with self._lock:
            self._expire(self._clock())
            return dict(self._by_client)
