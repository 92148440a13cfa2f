"""The registry lease's expiry, found by the mutation run (bench/mutation.py, issue 18).

A holder whose lease ran out must stop before its next alias write even when nobody has taken the lease over yet
(the takeover case is in tests/integration/test_registry_lease.py). Real SQLite ledger file.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mlcd.registry import lease

pytestmark = pytest.mark.unit


def test_an_expired_holder_stops_before_its_next_write_even_when_nobody_took_over(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    held = lease.try_acquire("registry:m", "slow", ttl_s=0.2, url=url)
    assert held is not None
    held.check()  # still ours and in time
    time.sleep(0.3)
    with pytest.raises(lease.LeaseLostError, match="expired during the move"):
        held.check()
    row = lease.read_lease("registry:m", url)
    assert row is not None and row["owner"] == "slow"  # nobody else holds it: the expiry alone stops the move
