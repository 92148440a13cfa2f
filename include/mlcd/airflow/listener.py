"""Airflow listener of the mlcd plugin: the first Airflow component to start creates the pools the DAGs need.

A task whose pool does not exist is never scheduled (the DAG only shows a "non-existent pool" warning), and a DAG
file must not touch the database while it is parsed, nor may an Airflow 3 task: so the pools are ensured where the
metadata database is at hand, when a scheduler, triggerer or DAG processor job starts (``on_starting``). An existing
pool is never changed (an operator may have resized it); two components starting at once may both try, and the
loser's duplicate insert is ignored. The names and sizes are :data:`mlcd.embedded.POOLS` (``make up`` creates
the same through the CLI).
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.listeners import hookimpl

log = logging.getLogger(__name__)


def ensure_pools() -> list[str]:
    """Create the mlcd pools that are missing.

    Returns:
        The names of the pools created now.
    """
    from airflow.models.pool import Pool
    from airflow.utils.session import create_session
    from sqlalchemy.exc import IntegrityError

    from mlcd.embedded import POOLS

    created = []
    for name, (slots, description) in POOLS.items():
        if Pool.get_pool(name) is not None:
            continue
        try:
            with create_session() as session:
                session.add(Pool(pool=name, slots=slots, description=description, include_deferred=False))
        except IntegrityError:  # another component created it between our look and our insert
            continue
        log.info("mlcd: created pool %r with %d slot(s) (%s)", name, slots, description)
        created.append(name)
    return created


@hookimpl
def on_starting(component: Any) -> None:
    # Task runners call this hook too (with no database access in Airflow 3): only a Job has the database.
    try:
        from airflow.jobs.job import Job
    except ImportError:  # a worker with the Task SDK alone
        return
    if not isinstance(component, Job):
        return
    try:
        ensure_pools()
    except Exception as exc:  # a listener must never stop the scheduler; the DAG's pool warning still shows
        log.warning("mlcd: could not ensure pools %s: %s", _pool_names(), exc)


def _pool_names() -> list[str]:
    from mlcd.embedded import POOLS

    return list(POOLS)
