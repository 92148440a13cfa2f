"""Data Docs as the operator reads them: every validation kept, offline pages, ad-hoc checks leave the site alone,
quiet GX logs, and the page's route with its security headers, from local or S3 storage (real GX, real moto S3)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mlcd.data.batch import Batch
from mlcd.settings import get_settings
from mlcd.validation.gate import GxGate, load_suite_dict
from tests.badbatches import bad_batches, good_bytes
from tests.integration.test_storage_s3 import s3_endpoint, s3_storage  # noqa: F401 - the real moto S3 server

pytestmark = pytest.mark.integration
# What a browser would fetch from elsewhere: scripts, images, stylesheets (a plain link to a web site is not loaded).
EXTERNAL = re.compile(r"""\bsrc=["']?(?:https?:)?//|<link\b[^>]*\bhref=["']?(?:https?:)?//""", re.IGNORECASE)


def _snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_every_validation_is_kept_and_every_page_renders_offline(tmp_path: Path, reference_data: Any) -> None:
    suite = load_suite_dict(get_settings().expectations_dir)
    docs = tmp_path / "data_docs"
    x, y = reference_data.x_train[:500], reference_data.y_train[:500]
    # Two gates: as two task processes, each with its own (ephemeral) GX context.
    GxGate(suite, docs).validate(Batch(x, y), batch_label="batch-001.npz")
    bad = GxGate(suite, docs).validate(Batch((255 - x).astype("uint8"), y), batch_label="batch-inverted.npz")
    assert not bad.passed
    index = (docs / "index.html").read_text()
    assert "batch-001.npz" in index and "batch-inverted.npz" in index  # the first one was not forgotten
    assert "2 validations" in index
    pages = sorted(docs.rglob("*.html"))
    assert len(pages) >= 3
    for page in pages:
        text = page.read_text()
        assert not EXTERNAL.search(text), (page, EXTERNAL.search(text))  # nothing from a CDN
        assert "mlcd-docs.css" in text
    assert (docs / "mlcd-docs.css").exists()
    # Every page the index links to exists (relative links: served under /mlcd/data-docs/ or from a folder).
    for href in re.findall(r"href='([^']+\.html)'", index):
        assert (docs / href).exists(), href


def test_an_ad_hoc_validate_leaves_the_site_untouched(tmp_path: Path, mlcd_home: Path, reference_data: Any) -> None:
    from mlcd.cli import cli

    docs = get_settings().data_docs_dir
    suite = load_suite_dict(get_settings().expectations_dir)
    GxGate(suite, docs).validate(Batch(reference_data.x_train[:300], reference_data.y_train[:300]),
                                 batch_label="kept.npz")
    before = _snapshot(docs)
    files = []
    for name, (data, _phrase) in list(bad_batches(reference_data.x_train[:300], reference_data.y_train[:300]).items())[:2]:
        files.append(tmp_path / f"{name}.npz")
        files[-1].write_bytes(data)
    files.append(tmp_path / "good.npz")
    files[-1].write_bytes(good_bytes(reference_data.x_train[:300], reference_data.y_train[:300]))
    result = CliRunner().invoke(cli, ["validate", *map(str, files)])
    assert result.exit_code == 1 and result.output.count("FAIL") == 2 and "PASS" in result.output, result.output
    assert _snapshot(docs) == before  # "files are only read": no page written, none replaced


def test_gx_import_chatter_is_not_logged() -> None:
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout); "
            "import mlcd.validation.gate; import great_expectations; "
            "from great_expectations.checkpoint import UpdateDataDocsAction")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr
    assert "Skipping registering function" not in out.stdout + out.stderr
    # The filter is that one logger: without mlcd's module first, GX says it (so the test can fail).
    raw = subprocess.run([sys.executable, "-c", code.replace("import mlcd.validation.gate; ", "")],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert "Skipping registering function" in raw.stdout + raw.stderr


def _client() -> Any:
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi.testclient import TestClient

    from mlcd.airflow.ui import create_app

    app = create_app()
    app.dependency_overrides[get_user] = lambda: {"sub": "tests"}  # the login itself: tests/e2e/test_ui_auth.py
    return TestClient(app)


def test_the_data_docs_route_sends_its_security_headers(mlcd_home: Path, reference_data: Any) -> None:
    docs = get_settings().data_docs_dir
    GxGate(load_suite_dict(get_settings().expectations_dir), docs).validate(
        Batch(reference_data.x_train[:300], reference_data.y_train[:300]), batch_label="b.npz")
    client = _client()
    for path, status in (("index.html", 200), ("mlcd-docs.css", 200), ("missing.html", 404)):
        r = client.get(f"/data-docs/{path}")
        assert r.status_code == status, (path, r.status_code)
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'self'" in csp
        assert r.headers["x-frame-options"] == "SAMEORIGIN" and r.headers["x-content-type-options"] == "nosniff"
    assert "b.npz" in client.get("/data-docs/index.html").text
    assert client.get("/data-docs/../../etc/passwd").status_code == 404


@pytest.mark.usefixtures("s3_storage")
def test_data_docs_are_served_from_s3_storage(mlcd_home: Path, reference_data: Any) -> None:
    from mlcd.data.intake import publish_data_docs

    settings = get_settings()
    assert not settings.storage_is_local
    GxGate(load_suite_dict(settings.expectations_dir), settings.data_docs_dir).validate(
        Batch(reference_data.x_train[:300], reference_data.y_train[:300]), batch_label="from-s3.npz")
    assert publish_data_docs(settings) > 0
    local = settings.data_docs_dir / "index.html"
    local.unlink()  # the api-server's disk no longer has it: the page must read the object store
    client = _client()
    r = client.get("/data-docs/index.html")
    assert r.status_code == 200 and "from-s3.npz" in r.text and r.headers["content-type"].startswith("text/html")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert client.get("/data-docs/nothing-here.html").status_code == 404

