"""mlcd_retrain: collect → validate → train → evaluate → register → canary, nightly or when a batch lands.

Wiring only: every task body is one call into ``mlcd.airflow``. A quarantined batch stops the run at
``validate``; a snapshot already trained with the same params stops it at ``unchanged`` (skipped, with the version
it already is; param ``force_retrain`` trains anyway); a challenger the gate rejects stops it at ``register`` with
the verdict as the reason and the champion untouched; ``canary`` moves live traffic step by step and promotes, or
stops when ``mlcd_guard`` rolled the version back. ``announce_canary`` emits the ``mlcd_canary`` Asset (starting
``mlcd_guard``) only for a version that becomes a canary, not for a bootstrapped first champion.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable, Param, task

from mlcd.airflow.canary import CanaryRolloutOperator
from mlcd.airflow.notifiers import PROMOTED_MESSAGE, RUN_FAILED_MESSAGE, RolloutNotifier
from mlcd.airflow.params import canary_spec_schema, gate_schema
from mlcd.airflow.steps import (
    CANARY_ASSET,
    DEFAULT_ARGS,
    DRIFT_ASSET,
    LANDING_ASSET,
    TRAINING_POOL,
    announce_canary_step,
    collect_step,
    evaluate_step,
    register_step,
    unchanged_step,
    validate_step,
)
from mlcd.airflow.training import make_train_task
from mlcd.settings import get_settings

DAG_ID = "mlcd_retrain"


def _cli_arg(value: object) -> str:
    # A quoted literal survives native rendering as a str (literal_eval of "'3'" is '3').
    return repr(str(value))


def build() -> DAG:
    """The ``mlcd_retrain`` DAG (nightly at 03:00 UTC, or when a batch lands or traffic drifts)."""
    # Deploy-wide defaults for the params below (MLCD_RETRAIN_DEFAULTS, checked in mlcd.settings): `make demo` on
    # scikit-learn's 1,797 digits sets more epochs and a lower floor there. A trigger's own params still win.
    run_defaults = get_settings().retrain_defaults
    with DAG(
        dag_id=DAG_ID,
        description="Retrain, gate and canary the production model on newly landed data.",
        schedule=AssetOrTimeSchedule(
            # Any of: a new batch landed, or live traffic drifted from the training data.
            timetable=CronTriggerTimetable("0 3 * * *", timezone="UTC"), assets=LANDING_ASSET | DRIFT_ASSET
        ),
        # No start_date: the first nightly run is the next 03:00, not a catch-up run for last night the moment the
        # DAG is unpaused (which would race the first batch that lands).
        catchup=False,
        max_active_runs=1,  # registry moves and rollouts must never interleave
        default_args=DEFAULT_ARGS,
        dagrun_timeout=timedelta(hours=24),  # the next nightly run must not queue behind a stuck one forever
        render_template_as_native_obj=True,  # dict and bool params reach operators as dicts and bools
        user_defined_filters={"cli_arg": _cli_arg},
        on_failure_callback=RolloutNotifier(message=RUN_FAILED_MESSAGE),
        tags=["mlcd", "training"],
        params={
            "epochs": Param(run_defaults.get("epochs", 3), type="integer", minimum=1, maximum=100,
                            description="Training epochs (early stopping may end sooner)."),
            "batch_size": Param(run_defaults.get("batch_size", 128), type="integer", minimum=8, maximum=4096,
                                description="Training batch size (images per gradient step)."),
            "seed": Param(0, type="integer", minimum=0,
                          description="Random seed of training: the same snapshot, params and seed give the same "
                                      "model (an unchanged run is skipped)."),
            "model": Param("cnn", type="string",
                           description="Model builder: 'cnn' (the reference CNN), 'mlcd.training.faulty:BlindModel' "
                                       "or an installed 'mlcd.models' entry point."),
            "max_train_samples": Param(None, type=["null", "integer"], minimum=1,
                                       description="Cap on training images (quick runs); empty for all."),
            "gate": Param(run_defaults.get("gate", {}), **gate_schema(),
                          description='Gate overrides, e.g. {"accuracy_floor": 0.95, "alpha": 0.05, '
                                      '"require_improvement": true}.'),
            "allow_partial": Param(False, type="boolean",
                                   description="Go on to training when some new batches were quarantined."),
            "force_promote": Param(False, type="boolean",
                                   description="Register even if the gate rejects (recorded as an override)."),
            "skip_canary": Param(False, type="boolean", description="Promote without the canary traffic steps."),
            "force_retrain": Param(False, type="boolean",
                                   description="Train even when this snapshot was already trained with these params."),
            "canary_spec": Param({}, **canary_spec_schema(),
                                 description='Rollout spec overrides, e.g. {"steps": [10, 50, 100], '
                                             '"analysis_window_s": 30, "min_requests": 50}.'),
        },
        doc_md=__doc__,
    ) as dag:

        @task
        def collect() -> list[dict]:
            return collect_step()

        @task
        def validate(pending: list[dict], params: dict | None = None, run_id: str | None = None) -> dict:
            return validate_step(pending, run_id=run_id, allow_partial=bool((params or {}).get("allow_partial")))

        @task
        def evaluate(train_result: dict, params: dict | None = None) -> dict:
            params = params or {}
            return evaluate_step(train_result, force=bool(params.get("force_promote")), gate=params.get("gate") or None)

        @task
        def unchanged(report: dict, params: dict | None = None) -> dict:
            params = params or {}
            return unchanged_step(report, params, force=bool(params.get("force_retrain")))

        @task
        def register(train_result: dict, evaluation: dict, check: dict, dag_run: Any = None) -> dict:
            return register_step(train_result, evaluation, dag_id=dag_run.dag_id, run_id=dag_run.run_id,
                                 fingerprint=check.get("fingerprint"))

        @task(outlets=[CANARY_ASSET])
        def announce_canary(registered: dict) -> dict:
            return announce_canary_step(registered)

        # Native rendering would turn "3" into 3, and a pod's args must be strings: `cli_arg` keeps each one a string.
        train = make_train_task(epochs="{{ params.epochs | cli_arg }}", batch_size="{{ params.batch_size | cli_arg }}",
                                seed="{{ params.seed | cli_arg }}", model="{{ params.model | cli_arg }}",
                                max_train_samples="{{ (params.max_train_samples or '') | cli_arg }}",
                                pool=TRAINING_POOL, execution_timeout=timedelta(hours=6))
        canary = CanaryRolloutOperator(
            version="{{ ti.xcom_pull(task_ids='register')['version'] }}",
            skip_canary="{{ params.skip_canary }}",
            spec="{{ params.canary_spec }}",  # type: ignore[arg-type]  # rendered (natively) to a dict
            execution_timeout=timedelta(hours=12),  # every step's analysis window, deferred, end to end
            on_success_callback=RolloutNotifier(message=PROMOTED_MESSAGE),
        )

        # Task-flow calls take XComArgs, resolved to the typed values at run time: mypy sees only the XComArgs.
        validated = validate(collect())  # type: ignore[arg-type]
        check = unchanged(validated)  # type: ignore[arg-type]
        check >> train
        registered = register(train.output, evaluate(train.output), check)  # type: ignore[arg-type]
        registered >> canary
        announce_canary(registered)  # type: ignore[arg-type]
    return dag
