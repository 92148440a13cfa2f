"""mlcd_control: roll back, promote, pause or resume by hand, from the Airflow UI's trigger form.

Press *Trigger* with an action, an optional version (default: the canary, or the champion for a rollback) and a
reason. The move is recorded in the version's rollout record with who asked (the triggering user) and this DAG
run. ``pause`` makes ``mlcd_retrain``'s canary task hold its current weight until ``resume``; ``rollback``
routes all traffic to stable first, then moves the aliases back.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, Param, task

from mlcd.airflow.guard import control_step, triggering_user
from mlcd.airflow.steps import DEFAULT_ARGS

DAG_ID = "mlcd_control"


def build() -> DAG:
    """The ``mlcd_control`` DAG (manual trigger only)."""
    with DAG(
        dag_id=DAG_ID,
        description="Manual rollback / promote / pause / resume of a model version.",
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        dagrun_timeout=timedelta(minutes=30),
        render_template_as_native_obj=True,
        tags=["mlcd", "guard", "manual"],
        params={
            "action": Param("rollback", type="string", enum=["rollback", "promote", "pause", "resume"],
                            description="What to do."),
            "version": Param(None, type=["null", "string"], description="Model version; empty: the canary "
                             "(or, for a rollback, the champion)."),
            "reason": Param("", type="string", minLength=1, description="Why (recorded in the rollout record)."),
        },
        doc_md=__doc__,
    ) as dag:

        @task
        def control(params: dict | None = None, dag_run: Any = None, run_id: str | None = None) -> dict:
            p = params or {}
            return control_step(p["action"], p.get("version"), p["reason"], actor=triggering_user(dag_run),
                                run_id=run_id)

        control()
    return dag
