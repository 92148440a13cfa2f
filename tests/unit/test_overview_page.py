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


def _history() -> list[dict]:
    """A version's rollout record as the canary task and the guard write it: start, three windows, a rollback."""
    def step(t: str, weight: int, outcome: str, c_err: float, s_err: float, c_p99: float) -> dict:
        # The canary's answers drift to class 7 as the windows go on; stable keeps an even mix.
        drift = {25: 20, 50: 36}.get(weight, 4)
        mix = {"canary": {"classes": {"1": 40 - drift, "7": drift}, "feedback_correct": 40 - drift,
                          "feedback_total": 40},
               "stable": {"classes": {str(c): 12 for c in range(10)}, "feedback_correct": 117, "feedback_total": 120}}
        return {"t": t, "version": "3", "event": "canary_step", "by": "airflow:mlcd_retrain", "dag_run": "manual__1",
                "d": {"weight": weight, "outcome": outcome, "action": "advance", "reasons": [f"{outcome} at {weight}"],
                      "canary": {"requests": 40, "errors": 0, "error_rate": c_err, "p99_latency_s": c_p99},
                      "stable": {"requests": 120, "errors": 0, "error_rate": s_err, "p99_latency_s": 0.012},
                      "mix": mix}}
    return [
        {"t": "2026-11-25T14:00:00.000Z", "version": "3", "to": "registered", "why": "record started",
         "dag_run": "manual__1"},
        {"t": "2026-11-25T14:00:05.000Z", "version": "3", "from": "registered", "to": "canary", "why": "gate passed",
         "by": "airflow:mlcd_retrain", "dag_run": "manual__1"},
        step("2026-11-25T14:01:05.000Z", 5, "pass", 0.0, 0.0, 0.015),
        step("2026-11-25T14:02:05.000Z", 25, "inconclusive", 0.01, 0.0, 0.02),
        step("2026-11-25T14:03:05.000Z", 50, "fail", 0.2, 0.0, 0.05),
        {"t": "2026-11-25T14:03:10.000Z", "version": "3", "from": "canary", "to": "rolled_back",
         "why": "guard: class distribution <shifted>", "by": "airflow:mlcd_guard",
         "dag_run": "asset_triggered__2026-11-25T14:03:00"},
    ]


def test_rollout_series_reads_the_record_windows_and_state_changes() -> None:
    from mlcd.overview import rollout_series

    series = rollout_series(_history())
    assert [p["weight"] for p in series["points"]] == [5, 25, 50]
    assert [p["outcome"] for p in series["points"]] == ["pass", "inconclusive", "fail"]
    assert series["points"][2]["canary_error_rate"] == 0.2 and series["points"][2]["stable_p99_latency_s"] == 0.012
    assert [m["to"] for m in series["marks"]] == ["canary", "rolled_back"]
    # Class mix (counts per class) and live accuracy (share of feedback labels matched), per variant and window.
    assert [p["canary_classes"] for p in series["points"]] == [{1: 36, 7: 4}, {1: 20, 7: 20}, {1: 4, 7: 36}]
    assert series["points"][0]["stable_classes"] == {c: 12 for c in range(10)}
    assert [p["canary_accuracy"] for p in series["points"]] == [0.9, 0.5, 0.1]
    assert series["points"][1]["stable_accuracy"] == 117 / 120


def test_windows_without_feedback_or_mix_have_no_accuracy() -> None:
    import re

    from mlcd.overview import rollout_chart_svg, rollout_series

    history = _history()
    history[2]["d"]["mix"]["canary"]["feedback_total"] = 0  # no labels in that window: no accuracy, not 0 %
    del history[3]["d"]["mix"]  # a window recorded before the mix was
    points = rollout_series(history)["points"]
    assert points[0]["canary_accuracy"] is None and "canary_accuracy" not in points[1]
    svg = rollout_chart_svg(rollout_series(history))
    assert svg.count("data-series='canary_accuracy'") == 1 and svg.count("data-series='stable_accuracy'") == 2
    # The window without a mix draws no bars: canary bars stand at two x positions, not three.
    assert len(set(re.findall(r"data-series='canary_mix' data-class='\d' data-count='\d+' x='([\d.]+)'", svg))) == 2


def test_rollout_chart_draws_every_point_the_verdicts_and_the_rollback() -> None:
    import re

    from mlcd.overview import rollout_chart_svg, rollout_series

    svg = rollout_chart_svg(rollout_series(_history()))
    assert svg.startswith("<svg") and "<script" not in svg
    series = re.findall(r"data-series='([a-z0-9_]+)'", svg)
    # 3 windows: a verdict dot each, and canary + stable points for error rate and p99 latency.
    assert series.count("verdict") == 3
    for name in ("canary_error_rate", "stable_error_rate", "canary_p99_latency_s", "stable_p99_latency_s"):
        assert series.count(name) == 3, name
    assert re.findall(r"data-outcome='(\w+)'", svg) == ["pass", "inconclusive", "fail"]
    assert "data-to='rolled_back'" in svg and ">rollback<" in svg
    assert "&lt;shifted&gt;" in svg  # reasons in tooltips are escaped
    # Live accuracy: one point per window and variant, at the recorded value (a 0-1 axis).
    for name in ("canary_accuracy", "stable_accuracy"):
        assert series.count(name) == 3, name
    assert "canary at 50%: 10% (40 labels)" in svg and "stable at 5%: 98% (120 labels)" in svg
    # Class mix: one stacked segment per (window, variant, class) with its count; heights add up to the panel.
    mix = re.findall(r"data-series='(canary|stable)_mix' data-class='(\d)' data-count='(\d+)' x='[\d.]+' "
                     r"y='[\d.]+' width='[\d.]+' height='([\d.]+)'", svg)
    canary = [(int(c), int(n)) for side, c, n, _ in mix if side == "canary"]
    assert canary == [(1, 36), (7, 4), (1, 20), (7, 20), (1, 4), (7, 36)]
    assert sum(1 for side, *_ in mix if side == "stable") == 30
    first_window = [float(h) for side, c, n, h in mix[:2]]
    assert sum(first_window) == pytest.approx(90, abs=0.2)  # the panel's height: shares of the window's answers
    assert "class 7 36/40 (90%)" in svg


def test_version_detail_links_both_ways_and_shows_training() -> None:
    import re

    from mlcd.overview import dag_runs, rollout_series

    data = _data()
    runs = dag_runs(_history(), trained_by="scheduled__2026-11-25T03:00:00+00:00")
    assert [(r["role"], r["dag_id"], r["run_id"]) for r in runs] == [
        ("trained", "mlcd_retrain", "scheduled__2026-11-25T03:00:00+00:00"),
        ("rolled out", "mlcd_retrain", "manual__1"),
        ("rolled back", "mlcd_guard", "asset_triggered__2026-11-25T14:03:00")]
    data["details"] = {"ok": True, "data": [{
        "version": "3", "state": "rolled_back", "run_id": "r3", "dag_run": "scheduled__2026-11-25T03:00:00+00:00",
        "dag_runs": runs + [{"role": "rolled back", "dag_id": None, "run_id": "manual__9", "by": "alice"}],
        "series": rollout_series(_history()),
        "curves": {"loss": [(1, 0.9), (2, 0.5)], "val_loss": [(1, 1.0), (2, 0.6)], "accuracy": [(1, 0.7), (2, 0.9)],
                   "val_accuracy": [(1, 0.68), (2, 0.88)]},
        "confusion": [[9 if i == j else 1 for j in range(10)] for i in range(10)],
    }]}
    page = render_overview(data)
    assert "id='v3'" in page and "href='#v3'" in page
    assert "http://127.0.0.1:5000/#/models/mnist-cnn/versions/3" in page
    assert "http://127.0.0.1:5000/#/runs/r3" in page
    # Each DAG run that acted on the version, linked by role (run ids are URL-quoted into the path).
    assert re.findall(r"<a class='dagrun' data-role='([a-z ]+)' href='([^']+)'", page) == [
        ("trained", "/dags/mlcd_retrain/runs/scheduled__2026-11-25T03%3A00%3A00%2B00%3A00"),
        ("rolled out", "/dags/mlcd_retrain/runs/manual__1"),
        ("rolled back", "/dags/mlcd_guard/runs/asset_triggered__2026-11-25T14%3A03%3A00")]
    assert "rolled back: run manual__9 by alice" in page  # a person's action names no DAG: shown, not linked
    assert page.count("class='pt' data-series='val_loss'") == 2
    confusion = page[page.index("<svg class='confusion'"):]
    assert confusion.count("<rect ") == 100 and "true 3, predicted 3: 9" in page
    assert "<script" not in page


def test_the_canary_step_records_each_variants_mix_as_counts() -> None:
    """What the chart reads is what the rollout recorded: per-variant class counts and feedback counts."""
    from mlcd.overview import rollout_series
    from mlcd.rollout.canary import window_mix
    from mlcd.rollout.metrics import SeriesCounters

    window = {"canary": SeriesCounters(requests=10, classes={3: 6.0, 5: 4.0, 8: 0.0}, feedback_correct=2,
                                       feedback_total=8).to_dict(),
              "stable": SeriesCounters(requests=5, classes={1: 5.0}).to_dict()}
    mix = window_mix(window)
    assert mix == {"canary": {"classes": {"3": 6, "5": 4}, "feedback_correct": 2, "feedback_total": 8},
                   "stable": {"classes": {"1": 5}, "feedback_correct": 0, "feedback_total": 0}}
    entry = {"t": "2026-11-25T14:01:05Z", "event": "canary_step", "d": {"weight": 25, "outcome": "pass", "mix": mix}}
    (point,) = rollout_series([entry])["points"]
    assert point["canary_classes"] == {3: 6, 5: 4} and point["canary_accuracy"] == 0.25
    assert point["stable_accuracy"] is None


# --- the status header -------------------------------------------------------------------------------------

NOW = 1_764_080_000.0  # 2025-11-25T14:13:20Z


def _iso(offset_s: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(NOW + offset_s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _with(data: dict, *, canary: str | None = None, weight: int = 0, history: list | None = None,
          drift: dict | None = None) -> dict:
    data["registry"]["data"]["status"]["aliases"]["canary"] = canary
    data["registry"]["data"]["history"] = history or []
    data["routes"]["data"] = {"stable": "2", "canary": canary, "canary_weight": weight}
    data["drift"] = {"ok": True, "data": drift}
    return data


def test_header_says_progressing_with_the_current_window_and_weight() -> None:
    from mlcd.overview import page_status

    hist = [{"t": _iso(-60), "version": "4", "to": "canary"},
            {"t": _iso(-30), "version": "4", "event": "canary_step",
             "d": {"weight": 25, "outcome": "pass", "action": "advance"}}]
    data = _with(_data(), canary="4", weight=50, history=hist, drift={"drifted": False})
    data["quarantine"]["data"] = []
    h = page_status(data, now=NOW)
    assert (h["state"], h["weight"], h["drift"]) == ("progressing", 50, "no drift")
    assert h["step"] == "window 1 at 25%: pass -> advance"
    assert h["as_of"] == "2025-11-25 14:13:20 UTC"
    # Paused after the step: the header says so (a later resume makes it progressing again).
    hist.append({"t": _iso(-10), "version": "4", "event": "paused", "d": {"reason": "dashboard"}})
    assert page_status(data, now=NOW)["state"] == "paused"
    hist.append({"t": _iso(-5), "version": "4", "event": "resumed", "d": {"reason": "fine"}})
    assert page_status(data, now=NOW)["state"] == "progressing"


def test_header_is_healthy_only_when_nothing_needs_a_person() -> None:
    from mlcd.overview import page_status

    data = _with(_data(), history=[{"t": _iso(-4000), "version": "2", "from": "canary", "to": "champion"}],
                 drift={"drifted": False})
    data["quarantine"]["data"] = []
    h = page_status(data, bake_s=300, now=NOW)
    assert h["state"] == "healthy" and h["attention"] == []
    assert h["bake"] == "version 2 passed: no rollback during its 300 s bake"
    data["registry"]["data"]["history"] = [{"t": _iso(-100), "version": "2", "from": "canary", "to": "champion"}]
    assert page_status(data, bake_s=300, now=NOW)["bake"] == "version 2 in its bake: 200 s of 300 s left"
    # Drift, a disagreement between serving and the registry, an unreadable source: degraded, errors first.
    data["drift"] = {"ok": True, "data": {"drifted": True}}
    assert page_status(data, now=NOW)["state"] == "degraded"
    data["drift"] = {"ok": True, "data": {"drifted": False}}
    data["routes"]["data"]["stable"] = "1"
    data["quarantine"]["data"] = [{"name": "b.npz", "batch_hash": "0" * 64, "reason": "inverted", "decided_at": "t"}]
    h = page_status(data, now=NOW)
    assert h["state"] == "degraded"
    assert [a["level"] for a in h["attention"]] == ["error", "warn"]
    assert "champion alias is version 2" in h["attention"][0]["text"] and "b.npz: inverted" in h["attention"][1]["text"]


def test_the_page_puts_the_header_and_the_quarantine_before_the_versions() -> None:
    from mlcd.overview import page_status

    data = _with(_data(), history=[{"t": _iso(-60), "version": "3", "from": "champion", "to": "rolled_back",
                                    "by": "airflow:mlcd_guard", "why": "class mix"}], drift=None)
    data["header"] = page_status(data, now=NOW)
    page = render_overview(data, refresh_s=30)
    assert page.index("id='status'") < page.index("id='attention'") < page.index("id='quarantine'") \
        < page.index("Versions and gate verdicts")
    assert "data-state='healthy'" in page  # a rollback the guard did and a quarantine are not a fault
    assert "version 3 rolled back in its bake" in page and "1 batch(es) quarantined" in page
    assert "<meta http-equiv='refresh' content='30'>" in page and "not monitored" in page
    assert "<meta http-equiv" not in render_overview(data)


def test_a_version_without_windows_says_why() -> None:
    from mlcd.overview import rollout_chart_svg

    def chart(*marks: str) -> str:
        return rollout_chart_svg({"points": [], "marks": [{"t": NOW + i, "to": m, "why": "", "by": None}
                                                          for i, m in enumerate(marks)]})

    assert "rolled back before its first analysis window finished" in chart("canary", "rolled_back")
    assert "no analysis window has finished yet" in chart("canary")
    assert "rejected without being canaried" in chart("rejected")
    assert "never served as a canary" in chart() and "not canaried" not in chart("canary", "rolled_back")
