"""mlcd_guard: watch a canary (and the champion it becomes) and take the traffic back by itself on a breach.

Started by the ``mlcd_canary`` Asset, which ``mlcd_retrain``'s ``announce_canary`` task emits when a version is
registered for rollout (a first model bootstrapped to champion emits none); one run at a time. ``watch`` is a
deferrable sensor: a trigger in the triggerer polls the gateway's ``/metrics`` every few seconds and judges canary
against stable (error rate, latency, predicted-class distribution, live accuracy; minimum samples; false alarms
controlled across checks and polls). It returns the decision. On a breach, ``rollback`` routes 100 % of traffic to
stable, moves the aliases back and marks the version ``rolled_back`` with the evidence; its success callback
(``RollbackNotifier``) posts the reason to the ``mlcd_alerts`` Connection (Slack or HTTP webhook, or the task log).
A healthy canary (promoted and through its bake period) ends the run with nothing to do. The canary task of
``mlcd_retrain`` reads the rollout record and stops when it sees the rollback.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param, task

from mlcd.airflow.guard import CanaryHealthSensor, is_breach, rollback_step
from mlcd.airflow.notifiers import ROLLBACK_MESSAGE, RollbackNotifier
from mlcd.airflow.steps import CANARY_ASSET, DEFAULT_ARGS
from mlcd.settings import get_settings

DAG_ID = "mlcd_guard"


def build() -> DAG:
    """The ``mlcd_guard`` DAG (scheduled by the ``mlcd_canary`` Asset)."""
    settings = get_settings()
    with DAG(
        dag_id=DAG_ID,
        description="Roll a misbehaving canary (or freshly promoted champion) back, by itself.",
        schedule=[CANARY_ASSET],
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,  # one guard per rollout: two guards must never move the same aliases
        default_args=DEFAULT_ARGS,
        dagrun_timeout=timedelta(hours=7),  # the watch's own limit (max_watch_s, 6 h) plus the rollback
        render_template_as_native_obj=True,
        tags=["mlcd", "guard"],
        params={
            "version": Param(None, type=["null", "string"],
                             description="Version to watch; empty: the first canary the gateway serves."),
            "poll_interval_s": Param(2.0, type="number", minimum=0.1, maximum=300,
                                     description="Seconds between polls of the gateway's metrics."),
            "bake_s": Param(settings.guard_bake_s, type="number", minimum=0,
                            description="Seconds a promoted champion is still watched."),
            "grace_s": Param(600.0, type="number", minimum=0,
                             description="Seconds to wait for a canary to appear before ending healthy."),
            "thresholds": Param(dict(settings.guard_thresholds), type="object",
                                description='Judge overrides, e.g. {"alpha": 0.001, "min_predictions": 50}.'),
        },
        doc_md=__doc__,
    ) as dag:
        watch = CanaryHealthSensor(
            version="{{ params.version or '' }}",
            poll_interval_s="{{ params.poll_interval_s }}",
            bake_s="{{ params.bake_s }}",
            grace_s="{{ params.grace_s }}",
            thresholds="{{ params.thresholds }}",  # a dict: native rendering keeps it one
            execution_timeout=timedelta(hours=6, minutes=10),
        )

        @task.short_circuit
        def breached(decision: dict) -> bool:
            return is_breach(decision)

        # A failed traffic move is retried within seconds, not minutes: users are on the bad version meanwhile.
        @task(retries=5, retry_delay=timedelta(seconds=5), retry_exponential_backoff=False,
              execution_timeout=timedelta(minutes=5),
              on_success_callback=RollbackNotifier(message=ROLLBACK_MESSAGE))
        def rollback(decision: dict, run_id: str | None = None) -> dict:
            return rollback_step(decision, run_id=run_id)

        # Task-flow calls take XComArgs, resolved to the typed values at run time: mypy sees only the XComArgs.
        gate = breached(watch.output)  # type: ignore[arg-type]
        rolled = rollback(watch.output)  # type: ignore[arg-type]
        gate >> rolled
    return dag
