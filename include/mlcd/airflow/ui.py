"""The mlcd page inside the Airflow UI: a FastAPI app the plugin mounts on the api-server at ``/mlcd``.

Routes require an authenticated Airflow user (the UI's session cookie or a bearer token from ``/auth/token``):
plugin endpoints are not protected by Airflow by default.
"""

from __future__ import annotations

from typing import Any

URL_PREFIX = "/mlcd"


def create_app() -> Any:
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi import Depends, FastAPI
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.staticfiles import StaticFiles

    from mlcd.settings import get_settings

    app = FastAPI(title="mlcd", docs_url=None, redoc_url=None, dependencies=[Depends(get_user)])

    def _overview() -> dict[str, Any]:
        from mlcd.airflow.hooks import MlflowHook
        from mlcd.overview import collect_overview

        return collect_overview(tracking_uri=MlflowHook().config.tracking_uri)

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        from mlcd.overview import render_overview

        return HTMLResponse(render_overview(_overview()))

    @app.get("/api/overview")
    def overview() -> JSONResponse:
        return JSONResponse(_overview())

    docs = get_settings().data_docs_dir
    docs.mkdir(parents=True, exist_ok=True)
    app.mount("/data-docs", StaticFiles(directory=str(docs), html=True, check_dir=False), name="data-docs")
    return app
