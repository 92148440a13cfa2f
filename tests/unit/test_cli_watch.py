"""``mlcd watch`` through the real CLI against a real ``/metrics`` endpoint on 127.0.0.1 (the gateway's metrics,
driven by the simulated gateway: each scrape is two seconds of traffic)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from click.testing import CliRunner

from mlcd.cli import cli
from tests.gatewaysim import SimGateway, behaviours, serve_metrics

pytestmark = pytest.mark.unit


@contextmanager
def metrics_server(gw: SimGateway, rate: float, promote_after: int | None = None, bake_rate: float | None = None
                   ) -> Iterator[str]:
    scrapes = [0]

    def scrape() -> bytes:
        scrapes[0] += 1
        if promote_after is not None and scrapes[0] == promote_after:
            gw.set_routes("2", None, 0)  # the canary task promotes it
        promoted = promote_after is not None and scrapes[0] >= promote_after
        gw.run(2.0, bake_rate if promoted and bake_rate is not None else rate)
        return gw.text().encode()

    with serve_metrics(scrape) as url:
        yield url


def _watch(url: str, *extra: str) -> object:
    return CliRunner().invoke(cli, ["watch", "--gateway-url", url, "--poll-interval", "0.05", "--timeout", "30",
                                    *extra])


def test_a_one_class_canary_exits_3_with_each_polls_evidence() -> None:
    gw = SimGateway(*behaviours(["healthy", "one_class"]), seed=1)
    gw.set_routes("1", "2", 5)
    with metrics_server(gw, 50.0) as url:
        result = _watch(url, "--dry-run")
    assert result.exit_code == 3, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("BREACH (dry run, nothing moved): canary version 2 failed: class_distribution")
    assert any("class_distribution pass" in line or "class_distribution inconclusive" in line for line in lines)
    assert "class_distribution fail (p=" in lines[-2]


def test_a_healthy_canary_that_bakes_exits_0_and_a_bake_without_traffic_exits_4() -> None:
    gw = SimGateway(*behaviours(["healthy", "healthy"]), seed=2)
    gw.set_routes("1", "2", 25)
    with metrics_server(gw, 50.0, promote_after=6) as url:
        result = _watch(url, "--bake", "0.3")
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].startswith("healthy: bake_complete")

    gw = SimGateway(*behaviours(["healthy", "healthy"]), seed=3)
    gw.set_routes("1", "2", 25)
    with metrics_server(gw, 50.0, promote_after=6, bake_rate=0.0) as url:
        result = _watch(url, "--bake", "0.3")
    assert result.exit_code == 4, result.output
    assert result.output.strip().splitlines()[-1].startswith("unverified: bake_unverified")


def test_bad_thresholds_are_one_line_exit_1() -> None:
    result = CliRunner().invoke(cli, ["watch", "--gateway-url", "http://127.0.0.1:1", "--thresholds", '{"typo": 1}'])
    assert result.exit_code == 1 and result.output == "error: unknown guard threshold keys: typo\n"
