"""mlcd_control: roll back, promote, pause or resume by hand, from the Airflow UI's trigger form.

Press *Trigger* with an action, a version and a reason. ``rollback`` and ``promote`` always name their version
(a rollback never means "the champion" by default); ``pause`` and ``resume`` default to the canary. The form
starts as a dry run: the task log says what would be done and nothing changes; untick *dry_run* to act. The
move is recorded in the version's rollout record with who asked (the triggering user) and this DAG run.
``pause`` makes ``mlcd_retrain``'s canary task hold its current weight until ``resume``; ``rollback`` routes all
traffic to stable first, then moves the aliases back. The same code runs ``mlcd rollback|promote|pause|resume``
(``mlcd.rollout.actions.manual``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, Param, task

from mlcd.airflow.guard import control_step, triggering_user
from mlcd.airflow.steps import DEFAULT_ARGS
from mlcd.rollout.actions import ManualAction

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
            # The least drastic action first: holding a canary is undone by a resume; a rollback is not undone.
            "action": Param("pause", type="string", enum=[a.value for a in ManualAction],
                            description="What to do: pause/resume a canary's steps, roll back or promote a version."),
            "version": Param(None, type=["null", "string"], pattern=r"^[0-9]+$",
                             description="Model version (required for rollback and promote; empty: the canary, "
                             "for pause and resume)."),
            "reason": Param("", type="string", minLength=1, description="Why (recorded in the rollout record)."),
            "dry_run": Param(True, type="boolean", description="Only say in the task log what would be done; "
                             "untick to act."),
        },
        doc_md=__doc__,
    ) as dag:

        @task
        def control(params: dict | None = None, dag_run: Any = None, run_id: str | None = None) -> dict:
            p = params or {}
            return control_step(p["action"], p.get("version"), p["reason"], actor=triggering_user(dag_run),
                                run_id=run_id, dry_run=bool(p.get("dry_run", True)))

        control()
    return dag
