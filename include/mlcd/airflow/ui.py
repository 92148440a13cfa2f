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
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
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

    settings = get_settings()
    docs = settings.data_docs_dir
    docs.mkdir(parents=True, exist_ok=True)
    files = StaticFiles(directory=str(docs), html=True, check_dir=False)

    @app.api_route("/data-docs/{path:path}", methods=["GET", "HEAD"], name="data-docs")
    async def data_docs(path: str, request: Request) -> Response:
        # Normalised as StaticFiles.get_path does for a mount ("..", "." removed); lookup_path still refuses
        # anything that resolves outside the folder.
        clean = os.path.normpath(os.path.join(*path.split("/"))) if path else "index.html"
        live = get_settings()
        if live.storage_is_local:
            try:
                response = await files.get_response(clean, request.scope)
            except HTTPException as exc:  # StaticFiles raises its 404: answered here, with the same headers
                response = PlainTextResponse(str(exc.detail), status_code=exc.status_code)
        else:
            # On an object store the validate task uploads the site there: the page reads it from where it is
            # kept, not from this api-server's disk (a task on another machine rendered it).
            response = await run_in_threadpool(_from_storage, live, clean)
        return secure_data_docs(response)

    return app


# Data Docs are GX-rendered HTML served inside the Airflow UI's origin: nothing may load from elsewhere (the site
# must render offline and a crafted batch name must not run script), nor may another site frame the page.
DATA_DOCS_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                 "font-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'none'; "
                 "frame-ancestors 'self'")
MAX_DOCS_FILE_BYTES = 32 * 1024 * 1024


def secure_data_docs(response: Any) -> Any:
    """The security headers every Data Docs response carries (also a 404)."""
    response.headers["Content-Security-Policy"] = DATA_DOCS_CSP
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def _from_storage(settings: Any, path: str) -> Any:
    """A Data Docs file read from the configured storage (``MLCD_STORAGE_URL``/data_docs/...)."""
    import mimetypes

    from fastapi.responses import PlainTextResponse, Response

    from mlcd.storage import Storage

    if path.startswith("..") or os.path.isabs(path):
        return PlainTextResponse("Not Found", status_code=404)
    site = Storage.from_settings(settings).child("data_docs")
    parts = path.split("/")
    try:
        if not site.exists(*parts) and site.exists(*parts, "index.html"):
            parts = [*parts, "index.html"]
        body = site.read_bytes(*parts, max_bytes=MAX_DOCS_FILE_BYTES)
    except (FileNotFoundError, OSError):
        return PlainTextResponse("Not Found", status_code=404)
    kind = mimetypes.guess_type(parts[-1])[0] or "application/octet-stream"
    return Response(body, media_type=kind)
