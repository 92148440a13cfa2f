"""mlcd_drift_watch: when live inputs drift from the training data, emit the ``mlcd_drift`` Asset (retrain).

Every 10 minutes ``check_drift`` reads the gateway's drift gauges (population stability index of image
intensity features and the share of anomalous images, over the last 2,000 ``/predict`` images, against the
served model's training snapshot). On drift it succeeds and its outlet emits ``mlcd_drift``, which schedules
``mlcd_retrain``; otherwise it is skipped and nothing is emitted. A cooldown (param) keeps one drifted window
from starting a retrain on every check.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, CronTriggerTimetable, Param, task

from mlcd.airflow.guard import drift_step
from mlcd.airflow.steps import DEFAULT_ARGS, DRIFT_ASSET

DAG_ID = "mlcd_drift_watch"


def build() -> DAG:
    """The ``mlcd_drift_watch`` DAG (every 10 minutes)."""
    with DAG(
        dag_id=DAG_ID,
        description="Start mlcd_retrain when live inputs drift from the training data.",
        schedule=CronTriggerTimetable("*/10 * * * *", timezone="UTC"),
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        dagrun_timeout=timedelta(minutes=9),  # the next check starts 10 minutes later
        render_template_as_native_obj=True,
        tags=["mlcd", "drift"],
        params={
            "cooldown_s": Param(6 * 3600.0, type="number", minimum=0,
                                description="Seconds after a drift signal during which no other is sent."),
        },
        doc_md=__doc__,
    ) as dag:

        @task(outlets=[DRIFT_ASSET], execution_timeout=timedelta(minutes=2))
        def check_drift(params: dict | None = None) -> dict:
            return drift_step(cooldown_s=float((params or {}).get("cooldown_s", 6 * 3600.0)))

        check_drift()
    return dag
