"""What counts as canary evidence (mlcd.serving.evidence): keyed sticky buckets, the per-client share bound and
the client address behind trusted proxies; and the gateway's routing through them, in process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from mlcd.serving.evidence import (
    LOOPBACK,
    ShareBound,
    Unrandomised,
    client_address,
    parse_networks,
    sticky_bucket,
    sticky_key,
)

pytestmark = pytest.mark.unit


def test_sticky_buckets_depend_on_the_secret_key_so_a_client_cannot_compute_its_own() -> None:
    ids = [f"attacker-{i}" for i in range(2000)]
    a, b = sticky_key("secret-a", b"x" * 32), sticky_key("secret-b", b"x" * 32)
    assert sticky_key("secret-a", b"y" * 32) == a  # replicas sharing the secret agree
    under_a = [sticky_bucket(c, a) for c in ids]
    assert under_a == [sticky_bucket(c, a) for c in ids]  # stable per client
    on_canary_a = {c for c, k in zip(ids, under_a, strict=True) if k < 100}  # a 1 % canary
    on_canary_b = {c for c in ids if sticky_bucket(c, b) < 100}
    assert 5 < len(on_canary_a) < 45 and len(on_canary_a & on_canary_b) < 5
    assert sticky_key(None, b"z" * 32) == b"z" * 32  # unset: the per-process random key


def test_one_client_carries_at_most_its_share_of_a_window_beyond_the_floor() -> None:
    now = [0.0]
    bound = ShareBound(window_s=60, max_share=0.1, floor=10, clock=lambda: now[0])
    admitted = {"attacker": 0, **{f"user-{i}": 0 for i in range(20)}}
    for _ in range(50):
        for i in range(20):
            admitted[f"user-{i}"] += bound.admit(f"user-{i}", 1)
        for _ in range(10):  # the attacker offers ten times what any user does
            admitted["attacker"] += bound.admit("attacker", 1)
        now[0] += 1.0
    total = sum(admitted.values())
    assert all(v == 50 for k, v in admitted.items() if k != "attacker")  # users are never throttled
    assert admitted["attacker"] <= 0.1 * total + 10 and admitted["attacker"] < 0.2 * 5000
    assert bound.shares()["attacker"] <= 0.1 * sum(bound.shares().values()) + 10


def test_the_window_slides_and_exempt_networks_are_not_bounded() -> None:
    now = [0.0]
    bound = ShareBound(window_s=10, max_share=0.5, floor=5, exempt=parse_networks(LOOPBACK), clock=lambda: now[0])
    # Alone in the window: n <= 5 + n/2 holds up to n = 10.
    assert all(bound.admit("10.0.0.1", 1) for _ in range(10)) and not bound.admit("10.0.0.1", 1)
    assert all(bound.admit("127.0.0.1", 64) for _ in range(100)) and all(bound.admit("::1", 1) for _ in range(9))
    now[0] = 11.0  # those ten slid out of the window
    assert bound.admit("10.0.0.1", 10) and not bound.admit("10.0.0.1", 1)
    assert ShareBound(max_share=1.0).admit("anyone", 10**9)
    with pytest.raises(ValueError, match="max_share"):
        ShareBound(max_share=0)
    with pytest.raises(ValueError, match="not an IP address or CIDR: 'nope'"):
        parse_networks(["10.0.0.0/8", "nope"])


def test_the_client_address_is_the_peer_unless_a_trusted_proxy_forwards_it() -> None:
    proxies = parse_networks(["10.1.0.0/16"])
    forged = {"x-forwarded-for": "1.2.3.4"}
    assert client_address("198.51.100.7", forged, proxies) == "198.51.100.7"  # not from a proxy: header ignored
    assert client_address("198.51.100.7", forged, ()) == "198.51.100.7"
    # Through the proxy: the rightmost hop the proxies did not add; what the client wrote itself is to its left.
    hops = {"x-forwarded-for": "1.2.3.4, 203.0.113.9, 10.1.2.3"}
    assert client_address("10.1.0.5", hops, proxies) == "203.0.113.9"
    assert client_address("10.1.0.5", {}, proxies) == "10.1.0.5"
    assert client_address(None, {}, proxies) == "unknown"


def _gateway(tmp_path: Path, **kw: object):  # type: ignore[no-untyped-def]
    from mlcd.serving.app import Gateway
    from mlcd.serving.config import GatewayConfig

    def load(version: str):  # type: ignore[no-untyped-def]
        return lambda x: np.tile(np.eye(10, dtype=np.float32)[int(version)], (len(x), 1))

    config = GatewayConfig(model_name="m", tracking_uri="http://127.0.0.1:9", admin_token=None,
                           state_path=tmp_path / "s.json", **kw)  # type: ignore[arg-type]
    return Gateway(config, load)


def test_only_randomised_traffic_within_its_share_is_counted_as_evidence(tmp_path: Path) -> None:
    async def scenario() -> dict[str, float]:
        gw = _gateway(tmp_path, evidence_exempt=(), evidence_floor=4, evidence_max_share=0.5)
        await gw.set_routes("1", "2", 50)
        x = np.zeros((1, 28, 28), dtype=np.float32)
        reasons = []
        for _ in range(10):
            reasons.append((await gw.route(x, None, client="10.0.0.1")).unrandomised)
            reasons.append((await gw.route(x, None, client="10.0.0.2")).unrandomised)
        reasons.append((await gw.route(x, "alice", client="10.0.0.3")).unrandomised)
        reasons.append((await gw.route(x, None, version="2", client="10.0.0.3")).unrandomised)
        reasons += [(await gw.route(x, None, client="10.0.0.3")).unrandomised for _ in range(30)]
        counts: dict[str, float] = {}
        for metric in gw.metrics.registry.collect():
            for s in metric.samples:
                if s.name == "mlcd_gateway_requests_total":
                    counts["evidence"] = counts.get("evidence", 0) + s.value
                elif s.name == "mlcd_gateway_unrandomised_requests_total":
                    counts[s.labels["reason"]] = counts.get(s.labels["reason"], 0) + s.value
        assert reasons[:20] == [None] * 20 and reasons[20:22] == [Unrandomised.STICKY, Unrandomised.PINNED]
        return counts

    counts = asyncio.run(scenario())
    # 10.0.0.3 sends 30 one by one into a window of 20: it may hold 4 plus half of the window, n <= 4 + (20 + n)/2
    # up to n = 28, so 28 count and 2 do not.
    assert counts == {"evidence": 48, "sticky": 1, "pinned": 1, "over_share": 2}
