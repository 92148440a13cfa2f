"""The mlcd page's HTML: every section rendered, reasons escaped, a down server shown as such."""

from __future__ import annotations

import pytest

from mlcd.overview import collect_overview, render_overview

pytestmark = pytest.mark.unit


def _data() -> dict:
    versions = [
        {"version": "1", "state": "previous", "aliases": ["previous"], "verdict": "pass", "accuracy": 0.95,
         "p_value": None, "reason": "replaced by version 2", "run_id": "r1"},
        {"version": "2", "state": "champion", "aliases": ["champion"], "verdict": "pass", "accuracy": 0.97,
         "p_value": 1e-6, "reason": "canary passed 3 analysis windows", "run_id": "r2"},
        {"version": "3", "state": "rolled_back", "aliases": [], "verdict": "forced", "accuracy": 0.1,
         "p_value": 0.0, "reason": "guard: <script>alert(1)</script> class distribution", "run_id": "r3"},
    ]
    return {
        "model_name": "mnist-cnn",
        "mlflow_url": "http://127.0.0.1:5000",
        "registry": {"ok": True, "data": {
            "status": {"aliases": {"champion": "2", "canary": None, "previous": "1"}, "versions": versions,
                       "consistent": True, "problems": []},
            "rollbacks": [{"t": "2026-11-25T14:10:32Z", "version": "3", "by": "airflow:mlcd_guard",
                           "why": "guard: class distribution shifted", "to": "rolled_back"}],
            "verdicts": versions, "history": []}},
        "routes": {"ok": True, "data": {"stable": "2", "canary": None, "canary_weight": 0}},
        "quarantine": {"ok": True, "data": [{"name": "batch-inverted.npz", "batch_hash": "78d7f415077e" * 4,
                                             "reason": "images look blank or inverted", "decided_at": "t"}]},
    }


def test_every_section_is_rendered_with_links() -> None:
    page = render_overview(_data())
    for text in ("champion", "canary", "previous", "stable: version 2", "rolled_back", "guard: class distribution",
                 "batch-inverted.npz", "images look blank or inverted", "Data Docs",
                 "http://127.0.0.1:5000/#/runs/r2"):
        assert text in page, text


def test_reasons_are_escaped() -> None:
    page = render_overview(_data())
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_unavailable_sections_say_why(mlcd_home, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MLCD_GATEWAY_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("MLCD_ADMIN_TOKEN", "overview-test-token-0123456789")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    data = collect_overview(tracking_uri="http://127.0.0.1:9")
    assert not data["routes"]["ok"] and "unreachable" in data["routes"]["error"]
    assert not data["registry"]["ok"]
    assert data["quarantine"] == {"ok": True, "data": []}
    page = render_overview(data)
    assert "gateway unavailable" in page and "registry unavailable" in page
