"""mlcd_landing_watch: a deferrable sensor that turns each newly landed batch into the landing Asset event.

Runs continuously, one run at a time; the sensor waits in the triggerer (no worker slot) and, when an unseen
batch lands, succeeds and emits ``mlcd_landing_zone``, which schedules ``mlcd_retrain``.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG

from mlcd.airflow.landing import NewBatchSensor
from mlcd.airflow.steps import DEFAULT_ARGS, LANDING_ASSET

DAG_ID = "mlcd_landing_watch"


def build() -> DAG:
    """The ``mlcd_landing_watch`` DAG (continuous)."""
    with DAG(
        dag_id=DAG_ID,
        description="Start mlcd_retrain when a new batch lands.",
        schedule="@continuous",
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        # A quiet landing zone ends the run after a day; "@continuous" starts the next one at once.
        dagrun_timeout=timedelta(days=1, hours=1),
        render_template_as_native_obj=True,
        tags=["mlcd", "data"],
        doc_md=__doc__,
    ) as dag:
        NewBatchSensor(task_id="wait_for_batch", outlets=[LANDING_ASSET], poll_interval=5.0,
                       execution_timeout=timedelta(days=1))
    return dag
