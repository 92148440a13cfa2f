"""The mlcd Airflow plugin: an "mlcd rollouts" entry in the UI's navigation (rollout state, verdicts, rollbacks).

Shipped in the package and registered twice over, as Airflow's own providers do: the ``airflow.plugins`` entry point
(loaded by every Airflow with the default lazy provider discovery) and the provider info's ``plugins`` key (what
``airflow providers plugins`` lists, and what Airflow loads when ``[core] lazy_discover_providers`` is off). A
user's Airflow gets the page by installing ``mlcd[airflow]``: nothing to copy into ``plugins/``. The page itself is
:mod:`mlcd.airflow.ui`.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from mlcd.airflow import listener
from mlcd.airflow.ui import URL_PREFIX, create_app

PLUGIN_NAME = "mlcd"


class MlcdPlugin(AirflowPlugin):
    name = PLUGIN_NAME
    # Creates the pools the DAGs need when a scheduler, triggerer or DAG processor starts (first run included).
    listeners = [listener]
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "mlcd"}]
    external_views = [
        {
            "name": "mlcd rollouts",
            "href": URL_PREFIX.lstrip("/") + "/",
            "url_route": "mlcd",
            "destination": "nav",
            "category": "browse",
        }
    ]
