"""First run of a fresh Airflow: the mlcd plugin's listener creates the pools when a component's job starts."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.dags


def _drop_pool(name: str) -> None:
    from airflow.models.pool import Pool
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    with create_session() as session:
        session.execute(delete(Pool).where(Pool.pool == name))


@pytest.fixture
def no_training_pool(airflow_db: Path):  # type: ignore[no-untyped-def]
    """The session's database without the pool, before and after (test_dag_integrity creates it by the CLI)."""
    _drop_pool("training")
    yield airflow_db
    _drop_pool("training")


def test_a_starting_job_creates_the_missing_training_pool_and_keeps_a_resized_one(no_training_pool: Path) -> None:
    from airflow.jobs.job import Job
    from airflow.models.pool import Pool
    from airflow.utils.session import create_session

    from mlcd.embedded import POOLS

    assert Pool.get_pool("training") is None
    Job()  # what `airflow scheduler` / `triggerer` / `dag-processor` construct first: on_starting fires
    pool = Pool.get_pool("training")
    assert pool is not None and pool.slots == POOLS["training"][0]

    with create_session() as session:  # an operator resizes it: a later start leaves it alone
        session.get(Pool, pool.id).slots = 4
    Job()
    assert Pool.get_pool("training").slots == 4


def test_task_runners_are_ignored(no_training_pool: Path) -> None:
    from airflow.models.pool import Pool

    from mlcd.airflow.listener import on_starting

    on_starting(component=object())  # a task runner's marker: no database in a task, nothing done
    assert Pool.get_pool("training") is None
    from mlcd.airflow.listener import ensure_pools

    assert ensure_pools() == ["training"] and ensure_pools() == []  # idempotent
