"""Airflow plugin: an "mlcd" entry in the Airflow UI's navigation showing rollout state, verdicts and rollbacks."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from mlcd.airflow.ui import URL_PREFIX, create_app


class MlcdPlugin(AirflowPlugin):
    name = "mlcd"
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
