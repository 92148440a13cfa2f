"""The registry lease in a real SQLite ledger file, contended by real processes and threads.

Mutual exclusion is checked the way it would fail: every holder appends "enter"/"exit" lines to one file inside
its critical section; with two holders at once the lines interleave and the fencing tokens go out of order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mlcd.registry import lease

pytestmark = pytest.mark.integration

_WORKER = r"""
import sys, time
from mlcd.registry import lease
url, log, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    with lease.hold("registry:race", url=url, ttl_s=30, wait_s=60, poll_s=0.01) as held:
        with open(log, "a") as f:
            f.write(f"enter {held.token} {held.owner}\n"); f.flush()
            time.sleep(0.01)
            held.check()
            f.write(f"exit {held.token} {held.owner}\n"); f.flush()
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2] / "include") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_many_processes_take_turns_and_tokens_only_grow(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    log = tmp_path / "log.txt"
    workers, rounds = 4, 8
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, url, str(log), str(rounds)], env=_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(workers)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()[-2000:]
    lines = log.read_text().splitlines()
    assert len(lines) == 2 * workers * rounds
    tokens = []
    for enter, leave in zip(lines[::2], lines[1::2], strict=True):
        kind_a, token_a, owner_a = enter.split(" ")
        kind_b, token_b, owner_b = leave.split(" ")
        assert (kind_a, kind_b) == ("enter", "exit"), f"two holders at once: {enter!r} then {leave!r}"
        assert (token_a, owner_a) == (token_b, owner_b)
        tokens.append(int(token_a))
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)  # fencing tokens strictly increase
    row = lease.read_lease("registry:race", url)
    assert row is not None and row["owner"] is None and row["token"] == workers * rounds


def test_threads_in_one_process_exclude_each_other(tmp_path: Path) -> None:
    url = str(tmp_path / "ledger.sqlite")  # a bare path works too
    inside, overlaps = [0], [0]
    guard = threading.Lock()

    def work() -> None:
        for _ in range(5):
            with lease.hold("registry:threads", url=url, wait_s=60, poll_s=0.005):
                with guard:
                    inside[0] += 1
                    overlaps[0] += inside[0] > 1
                time.sleep(0.005)
                with guard:
                    inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert overlaps[0] == 0


def test_a_busy_lease_fails_in_one_line_naming_the_holder(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    first = lease.try_acquire("registry:m", "guard-run", ttl_s=30, url=url)
    assert first is not None
    assert lease.try_acquire("registry:m", "retrain-run", ttl_s=30, url=url) is None

    def other_thread() -> None:  # a fresh context: it does not inherit this thread's re-entrant lease
        with pytest.raises(lease.LeaseHeldError, match="held by guard-run") as info:
            with lease.hold("registry:m", url=url, wait_s=0.2):
                pass
        assert "\n" not in str(info.value)

    t = threading.Thread(target=other_thread)
    t.start()
    t.join(10)
    assert lease.release(first)
    assert lease.try_acquire("registry:m", "retrain-run", ttl_s=30, url=url) is not None


def test_an_expired_holder_is_fenced_off(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    slow = lease.try_acquire("registry:m", "slow", ttl_s=0.2, url=url)
    assert slow is not None
    time.sleep(0.3)
    fast = lease.try_acquire("registry:m", "fast", ttl_s=30, url=url)
    assert fast is not None and fast.token == slow.token + 1
    with pytest.raises(lease.LeaseLostError, match="taken over"):
        slow.check()  # what a move does before its next alias write
    with pytest.raises(lease.LeaseLostError):
        slow.renew()
    assert not lease.release(slow)  # the stale holder cannot free the new holder's lease
    fast.check()


def test_a_holder_killed_mid_move_leaves_its_intent_to_the_next(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    script = (
        "import sys, time\nfrom mlcd.registry import lease\n"
        "with lease.hold('registry:m', url=sys.argv[1], ttl_s=0.5) as h:\n"
        "    h.record_intent({'op': 'promote', 'args': {'version': '7'}})\n"
        "    print('held', flush=True)\n    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, url], env=_env(), stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"held"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    row = lease.read_lease("registry:m", url)
    assert row is not None and row["intent"] == {"op": "promote", "args": {"version": "7"}}
    time.sleep(0.6)  # its lease expires; nobody released it
    with lease.hold("registry:m", url=url, wait_s=5) as held:
        assert held.pending_intent == {"op": "promote", "args": {"version": "7"}}
        held.clear_intent()
    after = lease.read_lease("registry:m", url)
    assert after is not None and after["intent"] is None and not after["held"]
    assert json.dumps(after, default=str)  # the row reads back as plain data for `mlcd status --json`


def test_the_default_url_is_the_ledger_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLCD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLCD_LEDGER_URL", raising=False)
    assert lease.ledger_url() == f"sqlite:///{(tmp_path / 'home' / 'ledger.sqlite').resolve()}"
    monkeypatch.setenv("MLCD_LEDGER_URL", "sqlite:////x/y.db")
    assert lease.ledger_url() == "sqlite:////x/y.db"
    # The batch ledger and the lease share the file without touching each other's tables.
    monkeypatch.delenv("MLCD_LEDGER_URL")
    from mlcd.data.ledger import Ledger

    Ledger(tmp_path / "home" / "ledger.sqlite")
    with lease.hold("registry:m"):
        pass
    Ledger(tmp_path / "home" / "ledger.sqlite")
