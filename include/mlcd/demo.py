"""``make demo``: the story on the embedded default, one turn at a time, with a table after each turn.

Turn 1: a first batch and a deliberately bad one land; ``mlcd_retrain`` validates them: the good batch is accepted
into a snapshot, the bad one is quarantined with its reason and the run stops, as it should.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from mlcd.settings import get_settings


def progress(message: str) -> None:
    print(f"[mlcd demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


@contextmanager
def step(message: str) -> Iterator[None]:
    start = time.monotonic()
    progress(f"{message} ...")
    yield
    progress(f"{message}: done in {time.monotonic() - start:.1f}s")


def table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    widths = [min(w, 90) for w in widths]
    line = "+".join("-" * (w + 2) for w in widths)
    print(f"\n== {title} ==")
    print(" | ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=False)))
    print(line)
    for row in rows:
        cells = [str(c) if len(str(c)) <= 90 else str(c)[:87] + "..." for c in row]
        print(" | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)))
    print()


def write_demo_batches(out: Path) -> dict[str, Path]:
    """Two good batches cut from the reference data and one inverted (bad) batch."""
    from mlcd.data.batch import save_batch
    from mlcd.data.reference import write_sample_batches

    first, second, third = write_sample_batches(out, [4000, 4000, 1000], seed=7)
    bad = np.load(third, allow_pickle=False)
    inverted = save_batch(out / "batch-inverted.npz", (255 - bad["x"]).astype(np.uint8), bad["y"])
    third.unlink()
    return {"first": first, "second": second, "inverted": inverted}


def ledger_table() -> None:
    from mlcd.data.ledger import Ledger

    rows = [[r.name, r.state, r.n_images if r.n_images is not None else "", r.batch_hash[:12], r.reason or ""]
            for r in Ledger(get_settings().ledger_path).list()]
    table("batches (ledger)", ["batch", "state", "images", "hash", "reason"], rows)


def run_retrain(conf: dict[str, Any] | None = None) -> dict[str, str]:
    """One ``mlcd_retrain`` run through Airflow's ``dag.test()``; returns task states."""
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(get_settings().project_root / "dags")).get_dag("mlcd_retrain")
    run = dag.test(run_conf=conf or {})
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def run_demo() -> int:
    from mlcd.embedded import prepare_airflow

    settings = get_settings()
    progress(f"state under {settings.home}; reference data: {os.environ.get('MLCD_DATA') or 'scikit-learn digits'}")
    with step("preparing the Airflow metadata DB"):
        prepare_airflow(settings)
    from mlcd.data.landing import LandingZone

    zone = LandingZone(settings.landing_uri)
    with step("cutting demo batches from the reference dataset"):
        batches = write_demo_batches(settings.home / "demo-batches")

    progress("turn 1: a first batch and an inverted batch land")
    zone.land(batches["first"])
    zone.land(batches["inverted"])
    with step("mlcd_retrain (collect -> validate)"):
        states = run_retrain()
    table("mlcd_retrain run 1", ["task", "state"], [[k, v] for k, v in states.items()])
    ledger_table()
    progress(f"quarantined copies and reasons: {settings.quarantine_dir}")
    progress(f"Data Docs: {settings.data_docs_dir / 'index.html'}")
    return 0
