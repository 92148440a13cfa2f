"""The mlcd page inside the Airflow UI: a FastAPI app the plugin mounts on the api-server at ``/mlcd``.

Every route requires an authenticated Airflow user (the UI's session cookie or a bearer token from
``/auth/token``): plugin endpoints are not protected by Airflow by default. The app-level ``get_user``
dependency covers routes only, not a mounted sub-app, so the Data Docs are served by a route of their own
(through Starlette's ``StaticFiles``, which keeps its path checks) instead of ``app.mount``.
"""

from __future__ import annotations

import os
from typing import Any

# At module level: FastAPI resolves the route's (postponed) annotations in this module's globals.
from starlette.requests import Request

URL_PREFIX = "/mlcd"


def create_app() -> Any:
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi import Depends, FastAPI
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.staticfiles import StaticFiles

    from mlcd.settings import get_settings

    # No OpenAPI schema route: FastAPI serves it outside the app-level dependencies (it answered without a login).
    app = FastAPI(title="mlcd", docs_url=None, redoc_url=None, openapi_url=None, dependencies=[Depends(get_user)])

    def _overview() -> dict[str, Any]:
        from mlcd.airflow.hooks import MlflowHook
        from mlcd.overview import collect_overview

        return collect_overview(tracking_uri=MlflowHook().config.tracking_uri)

    @app.get("/", response_class=HTMLResponse)
    def page(refresh: int | None = None) -> HTMLResponse:
        from mlcd.overview import render_overview

        # ?refresh=N re-reads the page every N seconds (5 s at least: each read asks MLflow and the gateway).
        return HTMLResponse(render_overview(_overview(), refresh_s=max(5, refresh) if refresh else None))

    @app.get("/api/overview")
    def overview() -> JSONResponse:
        return JSONResponse(_overview())

    docs = get_settings().data_docs_dir
    docs.mkdir(parents=True, exist_ok=True)
    files = StaticFiles(directory=str(docs), html=True, check_dir=False)

    @app.api_route("/data-docs/{path:path}", methods=["GET", "HEAD"], name="data-docs")
    async def data_docs(path: str, request: Request) -> Response:
        # Normalised as StaticFiles.get_path does for a mount ("..", "." removed); lookup_path still refuses
        # anything that resolves outside the folder.
        return await files.get_response(os.path.normpath(os.path.join(*path.split("/"))), request.scope)

    return app
