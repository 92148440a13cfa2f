"""mlcd as an Airflow provider (entry point ``apache_airflow_provider``): the ``mlflow`` connection type.

Registering the type this way is what lets the Connection form show MLflow's fields and its *Test* button reach
:meth:`mlcd.airflow.hooks.MlflowHook.test_connection` (Airflow finds a hook by its connection type only through a
provider). Form fields are declared here (``conn-fields`` / ``ui-field-behaviour``), as Airflow 3.3 asks,
instead of the hook's deprecated ``get_connection_form_widgets``. Importing this module imports nothing else.
"""

from __future__ import annotations

from typing import Any

from mlcd import __version__


def get_provider_info() -> dict[str, Any]:
    """The provider description Airflow's ProvidersManager reads."""
    return {
        "package-name": "mlcd",
        "name": "mlcd",
        "description": "Continuous delivery for ML models: the MLflow connection type and mlcd's notifiers.",
        "versions": [__version__],
        "connection-types": [
            {
                "hook-class-name": "mlcd.airflow.hooks.MlflowHook",
                "hook-name": "MLflow",
                "connection-type": "mlflow",
                "ui-field-behaviour": {
                    "hidden-fields": ["login"],
                    "relabeling": {"host": "Host or URL", "schema": "Scheme (http or https)", "password": "Token"},
                    "placeholders": {
                        "host": "mlflow.ml.svc or https://mlflow.example.com",
                        "port": "5000",
                        "schema": "http",
                        "password": "bearer token (optional)",
                    },
                },
                "conn-fields": {
                    "tracking_uri": {
                        "label": "Tracking URI",
                        "description": "Overrides host, port and scheme, e.g. http://mlflow.ml.svc:5000",
                        "schema": {"type": ["string", "null"]},
                    },
                },
            }
        ],
        "notifications": ["mlcd.airflow.notifiers.MlcdNotifier"],
    }
