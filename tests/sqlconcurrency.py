"""Concurrency scenarios on the ledger's SQL database, run against any URL (SQLite file or a real Postgres).

Each scenario starts real OS processes (``spawn``: nothing inherited but the arguments, like separate Airflow
workers) or threads that wait on one start signal and then hit the same rows at once; the caller asserts that
the database, not luck, decided: exactly one winner per batch, per cooldown, and no checkpoint ever replaced by
a state with fewer polls. Used by tests/unit/test_sql_state.py (SQLite) and
tests/integration/test_sql_state_postgres.py (Postgres).
"""

from __future__ import annotations

import multiprocessing
import threading
import traceback
from collections.abc import Callable
from typing import Any

HASHES = [f"{i:064x}" for i in range(1, 9)]


def _see_and_decide(url: str, who: str) -> list[dict[str, Any]]:
    from mlcd.data.ledger import ACCEPTED, QUARANTINED, Ledger

    ledger = Ledger(url)
    out = []
    for n, batch_hash in enumerate(HASHES):
        new = ledger.see(batch_hash, f"{who}-{n}.npz", f"/landing/{who}-{n}.npz", 100 + n)
        state = ACCEPTED if (int(who[1:]) + n) % 2 else QUARANTINED
        record, won = ledger.decide_once(batch_hash, state, reason=f"judged by {who}", run_id=who,
                                         details={"who": who})
        out.append({"hash": batch_hash, "new": new, "won": won, "record": record.as_dict(), "who": who})
    return out


def _claim(url: str, who: str, now: float, cooldown_s: float) -> bool:
    from mlcd.guard.signals import should_signal

    return should_signal(cooldown_s, now, url=url)


def _checkpoint(url: str, who: str, polls: int) -> bool:
    from mlcd.statestore import StateStore

    state = {"version": "3", "started_at": 100.0, "polls": polls, "who": who}
    return StateStore(url).replace_if("guard/3-100.000", state, lambda new, old: new["polls"] > old["polls"])


def _first_start(url: str, who: str) -> bool:
    """What a fresh process does first: create the ledger's and the state store's tables, and write a row.

    (The lease's table is created by the same :func:`mlcd.sql.ensure_schema`; importing :mod:`mlcd.registry`
    would import MLflow in every spawned process, so the lease's own races are in test_registry_lease.py.)"""
    from mlcd.data.ledger import Ledger
    from mlcd.statestore import StateStore

    Ledger(url).see(f"first-start-{who}", who, who, 1)
    StateStore(url).put(f"started/{who}", {"who": who})
    return True


SCENARIOS: dict[str, Callable[..., Any]] = {
    "see_and_decide": _see_and_decide,
    "claim": _claim,
    "checkpoint": _checkpoint,
    "first_start": _first_start,
}


Phase = tuple[str, list[tuple[Any, ...]] | None]  # a scenario name and each worker's extra arguments


def _child(phases: list[Phase], url: str, i: int, barrier: Any, results: Any) -> None:
    who = f"p{i}"
    for k, (name, args) in enumerate(phases):
        try:
            barrier.wait(120)  # every process starts each phase at the same moment
            results.put((k, who, True, SCENARIOS[name](url, who, *(args[i] if args else ()))))
        except BaseException:  # noqa: BLE001 - the parent reports the child's traceback
            results.put((k, who, False, traceback.format_exc()))
            barrier.abort()
            return


def run_processes(phases: list[Phase], url: str, n: int) -> list[dict[str, Any]]:
    """Run the scenarios of ``phases`` one after the other in ``n`` spawned processes, each phase released in all
    processes at once (a barrier); one ``{who: result}`` per phase. One process group for several phases: a
    spawned process pays for its imports once."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(n)
    results = ctx.Queue()
    procs = [ctx.Process(target=_child, args=(phases, url, i, barrier, results)) for i in range(n)]
    for p in procs:
        p.start()
    out: list[dict[str, Any]] = [{} for _ in phases]
    errors = []
    try:
        for _ in range(n * len(phases)):
            k, who, ok, value = results.get(timeout=300)
            if ok:
                out[k][who] = value
            else:
                errors.append(f"{who} in {phases[k][0]}:\n{value}")
                break
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    assert not errors, "\n".join(errors)
    return out


def run_threads(name: str, url: str, n: int, args: list[tuple[Any, ...]] | None = None) -> dict[str, Any]:
    """Run scenario ``name`` in ``n`` threads of this process released at once; ``{who: result}``."""
    barrier = threading.Barrier(n)
    out: dict[str, Any] = {}
    errors: list[str] = []

    def body(i: int) -> None:
        who = f"t{i}"
        try:
            barrier.wait(60)
            out[who] = SCENARIOS[name](url, who, *(args or [()] * n)[i])
        except BaseException:  # noqa: BLE001
            errors.append(f"{who}:\n{traceback.format_exc()}")

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, "\n".join(errors)
    return out


# --- assertions shared by the SQLite and the Postgres tests ------------------------------------------------------


def assert_one_winner_per_batch(results: dict[str, list[dict[str, Any]]], url: str) -> None:
    from mlcd.data.ledger import Ledger

    rows = [row for per_worker in results.values() for row in per_worker]
    for batch_hash in HASHES:
        mine = [r for r in rows if r["hash"] == batch_hash]
        assert sum(r["new"] for r in mine) == 1, f"{batch_hash[-4:]}: see() returned True {sum(r['new'] for r in mine)}x"
        winners = [r for r in mine if r["won"]]
        assert len(winners) == 1, f"{batch_hash[-4:]}: {len(winners)} decisions recorded"
        stored = Ledger(url).get(batch_hash)
        assert stored is not None
        # Everyone converges on the winner's verdict, and that is what the ledger holds.
        assert {r["record"]["run_id"] for r in mine} == {winners[0]["who"]} == {stored.run_id}
        assert stored.reason == f"judged by {winners[0]['who']}" and stored.details == {"who": winners[0]["who"]}
    assert Ledger(url).known_hashes() >= set(HASHES)


__all__ = ["HASHES", "assert_one_winner_per_batch", "run_processes", "run_threads"]
