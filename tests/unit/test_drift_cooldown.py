"""The drift signal's cooldown (issue #23.2): it holds while the retrain it started is on its way or its version
serves, and is released when that retrain produced no champion, so faked drift cannot mute genuine drift."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlcd.guard.signals import CooldownHold, cooldown_hold, drift_cooldown_status, drift_signal

pytestmark = pytest.mark.unit

SIGNAL = {"at": 1000.0, "latest_version": 4}


@pytest.mark.parametrize(("later", "now", "hold", "says"), [
    ([], 1100.0, CooldownHold.RETRAINING, "registered no version yet"),
    ([(5, "registered")], 1100.0, CooldownHold.RETRAINING, "version 5"),
    ([(5, "canary")], 1100.0, CooldownHold.SERVING, "canary"),
    ([(5, "champion")], 1100.0, CooldownHold.SERVING, "champion"),
    ([(5, "rejected")], 1100.0, CooldownHold.RELEASED, "was rejected"),
    ([(5, "rolled_back")], 1100.0, CooldownHold.RELEASED, "was rolled_back"),
    ([(5, "rejected"), (6, "champion")], 1100.0, CooldownHold.SERVING, "version 6"),
    ([], 1000.0 + 3 * 3600.0, CooldownHold.RELEASED, "registered no version within"),
    ([(5, "champion")], 1000.0 + 6 * 3600.0, CooldownHold.CLEAR, "beyond the"),
])
def test_what_the_signalled_retrain_produced_decides_the_hold(later: list[tuple[int, str]], now: float,
                                                              hold: CooldownHold, says: str) -> None:
    got, reason = cooldown_hold(SIGNAL, now, 6 * 3600.0, later)
    assert got is hold and says in reason, reason
    assert cooldown_hold(None, now, 6 * 3600.0, later)[0] is CooldownHold.CLEAR


def test_a_rejected_retrain_releases_the_cooldown_once_and_the_decision_is_kept_for_the_page(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLCD_LEDGER_URL", f"sqlite:///{tmp_path / 'db.sqlite'}")
    drift = {"drifted": True, "n_images": 25_000}
    assert drift_signal(3600.0, drift, [(1, "champion")], now=10.0)[:2] == (True, CooldownHold.CLEAR)
    signalled, hold, reason = drift_signal(3600.0, drift, [(1, "champion")], now=20.0)
    assert not signalled and hold is CooldownHold.RETRAINING
    status = drift_cooldown_status()
    assert status is not None and status["state"] == "retraining" and status["reason"] == reason
    # The retrain the faked drift started was rejected: later genuine drift is signalled again, once.
    signalled, hold, reason = drift_signal(3600.0, drift, [(1, "champion"), (2, "rejected")], now=30.0)
    assert signalled and hold is CooldownHold.RELEASED and "version 2" in reason
    assert not drift_signal(3600.0, drift, [(1, "champion"), (2, "rejected")], now=40.0)[0]
    # An unreadable registry releases nothing: only the plain cooldown applies.
    signalled, hold, reason = drift_signal(3600.0, drift, None, now=50.0)
    assert not signalled and "registry unreadable" in reason
    assert drift_signal(3600.0, drift, None, now=30.0 + 3600.0)[0]
