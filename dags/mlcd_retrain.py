"""mlcd_retrain: land → validate → train → evaluate → register → canary, nightly or when a batch lands.

Wiring only: every task body is one call into ``mlcd.airflow.steps`` (see ../include/mlcd).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable, Param, task

from mlcd.airflow.steps import DEFAULT_ARGS, LANDING_ASSET, collect_step, validate_step

with DAG(
    dag_id="mlcd_retrain",
    description="Retrain, gate and canary the production model on newly landed data.",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 3 * * *", timezone="UTC"), assets=[LANDING_ASSET]
    ),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # registry moves and rollouts must never interleave
    default_args=DEFAULT_ARGS,
    tags=["mlcd", "training"],
    params={
        "epochs": Param(3, type="integer", minimum=1, maximum=100, description="Training epochs (early stopping may end sooner)."),
        "batch_size": Param(128, type="integer", minimum=8, maximum=4096),
        "allow_partial": Param(False, type="boolean", description="Go on to training when some new batches were quarantined."),
        "force_promote": Param(False, type="boolean", description="Promote even if the gate rejects (recorded as an override)."),
        "skip_canary": Param(False, type="boolean", description="Promote without the canary traffic steps."),
    },
    doc_md=__doc__,
) as dag:

    @task
    def collect() -> list[dict]:
        return collect_step()

    @task
    def validate(pending: list[dict], params: dict | None = None, run_id: str | None = None) -> dict:
        return validate_step(pending, run_id=run_id, allow_partial=bool((params or {}).get("allow_partial")))

    validate(collect())
