"""The mlcd DAG family as a factory: a DAG bundle holds two lines and gets every mlcd DAG.

A user's DAG folder (or any Airflow DAG bundle) holds one file::

    from mlcd.airflow.dags import mlcd_dags

    globals().update(mlcd_dags())

Airflow's DAG processor finds the DAGs among that file's globals (they are also auto-registered while it is
imported), so every DAG's ``fileloc`` is the bundle's file and a worker re-parses exactly that file to run a task.
One module per DAG here (``retrain``, ``landing_watch``, ``drift_watch``, ``guard``, ``control``), each with a
``build()`` returning one DAG: params, schedules, Assets and task order live there, and a change to one DAG is a
change to one module. Parsing stays light: these modules import only Airflow's SDK and mlcd's glue, never
TensorFlow, MLflow or Kubernetes (those are imported inside the task bodies).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from airflow.sdk import DAG

from mlcd.airflow.dags import control, drift_watch, guard, landing_watch, retrain

# dag_id -> builder, in the order the platform's story runs them.
BUILDERS: dict[str, Callable[[], DAG]] = {
    "mlcd_landing_watch": landing_watch.build,
    "mlcd_retrain": retrain.build,
    "mlcd_guard": guard.build,
    "mlcd_drift_watch": drift_watch.build,
    "mlcd_control": control.build,
}
DAG_IDS: tuple[str, ...] = tuple(BUILDERS)


def mlcd_dags(only: Iterable[str] | None = None) -> dict[str, DAG]:
    """Build the mlcd DAGs (fresh objects on every call), keyed by ``dag_id``.

    Args:
        only: dag_ids to build (e.g. a bundle without the drift watch); ``None`` builds all of :data:`DAG_IDS`.
            An unknown id is refused in one line rather than silently building nothing.

    Returns:
        ``{dag_id: DAG}``, ready for ``globals().update(...)`` in a DAG file.
    """
    wanted = DAG_IDS if only is None else tuple(only)
    unknown = sorted(set(wanted) - set(BUILDERS))
    if unknown:
        raise ValueError(f"unknown mlcd DAG ids {unknown}; known: {', '.join(DAG_IDS)}")
    return {dag_id: BUILDERS[dag_id]() for dag_id in wanted}


__all__ = ["BUILDERS", "DAG_IDS", "mlcd_dags"]
