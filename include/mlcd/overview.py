"""The operator's view of one model, gathered from where each fact lives. Airflow-free.

Registry (aliases, states, verdicts, rollbacks), the router (current traffic weights), the ledger (quarantined
batches) and links (MLflow runs, Data Docs). Each section is gathered on its own: a server that is down turns
its section into an "unavailable" line instead of failing the page.
"""

from __future__ import annotations

import html
from datetime import UTC
from typing import Any

from mlcd.settings import Settings, get_settings


def _section(fn: Any) -> dict[str, Any]:
    try:
        return {"ok": True, "data": fn()}
    except Exception as err:  # the page must still render: say what is missing and why
        return {"ok": False, "error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}


def collect_overview(settings: Settings | None = None, tracking_uri: str | None = None) -> dict[str, Any]:
    """Everything the mlcd page shows, as JSON-friendly data."""
    settings = settings or get_settings()
    uri = tracking_uri or settings.tracking_uri

    def registry() -> dict[str, Any]:
        from mlcd.registry import ModelRegistry, RolloutState

        reg = ModelRegistry(uri, settings.model_name)
        status = reg.status()
        history = reg.history()
        return {
            "status": status,
            "rollbacks": [h for h in history if h.get("to") == RolloutState.ROLLED_BACK][-20:],
            "verdicts": [v for v in status["versions"] if v.get("verdict")][-10:],
            "history": history[-30:],
            "full_history": history,
        }

    def routes() -> dict[str, Any]:
        from mlcd.rollout.router import router_from_settings

        current = router_from_settings().get_routes()
        return {"stable": current.stable, "canary": current.canary, "canary_weight": current.canary_weight}

    def quarantine() -> list[dict[str, Any]]:
        from mlcd.data.ledger import QUARANTINED, Ledger

        return [
            {"name": r.name, "batch_hash": r.batch_hash, "reason": r.reason, "decided_at": r.decided_at}
            for r in Ledger(settings.ledger_path).list(QUARANTINED)
        ]

    reg = _section(registry)

    def details() -> list[dict[str, Any]]:
        if not reg["ok"]:
            raise RuntimeError("registry unavailable")
        return version_details(uri, reg["data"]["status"]["versions"], reg["data"]["full_history"])

    out = {
        "model_name": settings.model_name,
        "mlflow_url": uri,
        "registry": reg,
        "routes": _section(routes),
        "quarantine": _section(quarantine),
        "details": _section(details),
    }
    if reg["ok"]:
        reg["data"].pop("full_history", None)
    return out


def version_details(tracking_uri: str, versions: list[dict[str, Any]], history: list[dict[str, Any]],
                    limit: int | None = None) -> list[dict[str, Any]]:
    """For the newest versions: the rollout series, the DAG run that made it, its run's curves and confusion
    matrix (each from where it was recorded: the rollout record, MLflow's metric history and artifacts)."""
    from mlflow import MlflowClient

    limit = DETAIL_VERSIONS if limit is None else limit
    client = MlflowClient(tracking_uri=tracking_uri)
    out = []
    for v in list(reversed(versions))[:limit]:
        own = [h for h in history if str(h.get("version")) == str(v["version"])]
        detail: dict[str, Any] = {
            "version": v["version"], "state": v["state"], "run_id": v.get("run_id"),
            "dag_run": next((h["dag_run"] for h in own if h.get("dag_run")), None),
            "series": rollout_series(own), "curves": {}, "confusion": None,
        }
        run_id = v.get("run_id")
        if run_id:
            try:
                detail["curves"] = {k: [(int(m.step), float(m.value)) for m in client.get_metric_history(run_id, k)]
                                    for k in CURVE_KEYS}
            except Exception as err:  # noqa: BLE001 - the section says what is missing
                detail["curves_error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            try:
                import json
                import tempfile

                with tempfile.TemporaryDirectory() as tmp:
                    path = client.download_artifacts(run_id, "per_class_metrics.json", tmp)
                    with open(path) as fh:
                        detail["confusion"] = json.load(fh).get("confusion_matrix")
            except Exception:  # noqa: BLE001 - runs logged outside the trainer have no matrix: shown as such
                detail["confusion"] = None
        out.append(detail)
    return out


def format_number(value: Any) -> str:
    """Numbers as a person reads them (4 significant digits); a missing one as a dash."""
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return "-"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body or '<tr><td>none</td></tr>'}</tbody></table>"


def _detail_html(d: dict[str, Any], model_name: str, mlflow: str) -> str:
    """One version: links both ways (MLflow version and run, the DAG run that made it, the guard's runs), the
    rollout chart, training curves and the confusion matrix."""
    e = html.escape
    v = str(d["version"])
    links = [f"<a href='{e(mlflow)}/#/models/{e(model_name)}/versions/{e(v)}' target='_blank'>MLflow version</a>"]
    if d.get("run_id"):
        links.append(f"<a href='{e(mlflow)}/#/runs/{e(str(d['run_id']))}' target='_blank'>training run</a>")
    if d.get("dag_run"):
        links.append(f"<a href='/dags/mlcd_retrain/runs/{e(str(d['dag_run']))}' target='_top'>mlcd_retrain run</a>")
    links.append("<a href='/dags/mlcd_guard/runs' target='_top'>mlcd_guard runs</a>")
    curves = curves_svg(d.get("curves") or {}) if not d.get("curves_error") else (
        f"<p class='warn'>training curves unavailable: {e(d['curves_error'])}</p>")
    verdicts = [p for p in d["series"]["points"] if p.get("outcome") in VERDICT_COLOURS]
    summary = ", ".join(f"{p.get('weight')}% {p.get('outcome')}" for p in verdicts) or "no analysis windows"
    return (f"<section class='version' id='v{e(v)}'><h3>version {e(v)} · {e(str(d['state']))}</h3>"
            f"<p>{' · '.join(links)}</p><p class='muted'>windows: {e(summary)}</p>"
            f"{rollout_chart_svg(d['series'])}"
            f"<div class='row'><div>{curves}</div><div>{confusion_svg(d.get('confusion'))}</div></div></section>")


def render_overview(data: dict[str, Any], data_docs_href: str = "data-docs/index.html") -> str:
    """The page as self-contained HTML (no external CSS/JS: it must render offline)."""
    e = html.escape
    mlflow = data["mlflow_url"].rstrip("/")
    parts = [f"<h1>mlcd · {e(data['model_name'])}</h1>"]

    reg = data["registry"]
    if reg["ok"]:
        status = reg["data"]["status"]
        aliases = status["aliases"]
        cards = "".join(
            f"<div class='card'><div class='label'>{a}</div><div class='value'>{e(str(aliases.get(a) or '—'))}</div></div>"
            for a in ("champion", "canary", "previous")
        )
        parts.append(f"<div class='cards'>{cards}</div>")
        if not status.get("consistent", True):
            parts.append("<p class='warn'>" + e("; ".join(status.get("problems", []))) + "</p>")
    else:
        parts.append(f"<p class='warn'>registry unavailable at {e(mlflow)}: {e(reg['error'])}</p>")

    routes = data["routes"]
    parts.append("<h2>Traffic</h2>")
    if routes["ok"]:
        r = routes["data"]
        canary = f"version {e(str(r['canary']))} at {r['canary_weight']}%" if r["canary"] else "none"
        parts.append(f"<p>stable: version {e(str(r['stable']))} · canary: {canary}</p>")
    else:
        parts.append(f"<p class='warn'>gateway unavailable: {e(routes['error'])}</p>")

    if reg["ok"]:
        versions = reg["data"]["status"]["versions"]
        rows = [[
            e(v["version"]), e(v["state"]), e(", ".join(v["aliases"])), e(str(v.get("verdict") or "")),
            e(format_number(v.get("accuracy"))), e(format_number(v.get("p_value"))), e(str(v.get("reason") or "")),
            f"<a href='{e(mlflow)}/#/runs/{e(str(v['run_id']))}' target='_blank'>run</a>" if v.get("run_id") else "",
            f"<a href='#v{e(str(v['version']))}'>rollout</a>",
        ] for v in reversed(versions[-15:])]
        parts.append("<h2>Versions and gate verdicts</h2>")
        parts.append(_table(["version", "state", "aliases", "verdict", "accuracy", "p-value", "last reason", "MLflow",
                             "detail"], rows))
        rollbacks = reg["data"]["rollbacks"]
        parts.append("<h2>Rollbacks</h2>")
        parts.append(_table(["when", "version", "by", "reason"], [
            [e(str(h.get("t", ""))), e(str(h["version"])), e(str(h.get("by", ""))), e(str(h.get("why", "")))]
            for h in reversed(rollbacks)
        ]))

    details = data.get("details") or {"ok": True, "data": []}
    if details["ok"] and details["data"]:
        parts.append("<h2>Rollouts and training, per version</h2>")
        for d in details["data"]:
            parts.append(_detail_html(d, data["model_name"], mlflow))
    elif not details["ok"]:
        parts.append(f"<p class='warn'>version details unavailable: {e(details['error'])}</p>")

    quarantine = data["quarantine"]
    parts.append("<h2>Quarantined batches</h2>")
    if quarantine["ok"]:
        parts.append(_table(["batch", "hash", "when", "reason"], [
            [e(q["name"]), e(q["batch_hash"][:12]), e(str(q["decided_at"] or "")), e(str(q["reason"] or ""))]
            for q in reversed(quarantine["data"])
        ]))
    else:
        parts.append(f"<p class='warn'>ledger unavailable: {e(quarantine['error'])}</p>")
    parts.append(f"<p><a href='{e(data_docs_href)}' target='_blank'>Great Expectations Data Docs</a> · "
                 f"<a href='{e(mlflow)}' target='_blank'>MLflow UI</a></p>")
    style = (
        "body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1f2937}h1{font-size:1.4rem}"
        "h2{font-size:1.1rem;margin-top:1.5rem}table{border-collapse:collapse;width:100%;font-size:.85rem}"
        "th,td{border-bottom:1px solid #e5e7eb;padding:.35rem .5rem;text-align:left;vertical-align:top}"
        "th{background:#f3f4f6}.cards{display:flex;gap:1rem}.card{border:1px solid #d1d5db;border-radius:.5rem;"
        "padding:.75rem 1.25rem;min-width:8rem}.label{font-size:.75rem;text-transform:uppercase;color:#6b7280}"
        ".value{font-size:1.6rem;font-weight:600}.warn{color:#b45309}.muted{color:#6b7280;font-size:.85rem}"
        ".version{border:1px solid #e5e7eb;border-radius:.5rem;padding:.5rem 1rem;margin:.75rem 0}"
        ".row{display:flex;gap:1.5rem;flex-wrap:wrap;align-items:flex-start}.ct{font-size:11px;fill:#374151}"
        ".tick{font-size:9px;fill:#6b7280}.ax{stroke:#d1d5db}"
    )
    return ("<!doctype html><html><head><meta charset='utf-8'><title>mlcd</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")


# --- per-version detail: rollout chart, training curves, confusion matrix -----------------------------------

DETAIL_VERSIONS = 4  # the newest versions get a detail section (each costs a few MLflow calls)
CURVE_KEYS = ("loss", "val_loss", "accuracy", "val_accuracy")
VERDICT_COLOURS = {"pass": "#16a34a", "fail": "#dc2626", "inconclusive": "#9ca3af"}
CANARY_COLOUR, STABLE_COLOUR, WEIGHT_COLOUR = "#d97706", "#2563eb", "#7c3aed"


def _epoch_s(t: Any) -> float | None:
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(t).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def rollout_series(history: list[dict[str, Any]]) -> dict[str, Any]:
    """A version's rollout over time, from its rollout record (what the canary task and the guard wrote).

    Returns ``{"points": [...], "marks": [...]}``: one point per analysis window (``canary_step`` event: weight,
    verdict, each variant's requests, error rate and p99 latency) and one mark per state change (canary start,
    promotion, rollback) with its reason.
    """
    points, marks = [], []
    for entry in history:
        t = _epoch_s(entry.get("t"))
        if t is None:
            continue
        d = entry.get("d") or {}
        if entry.get("event") == "canary_step":
            points.append({
                "t": t, "weight": d.get("weight"), "outcome": d.get("outcome"), "action": d.get("action"),
                "reasons": d.get("reasons") or [],
                **{f"{side}_{key}": (d.get(side) or {}).get(key)
                   for side in ("canary", "stable") for key in ("requests", "error_rate", "p99_latency_s")},
            })
        elif entry.get("event") == "canary_step_held":
            points.append({"t": t, "weight": d.get("weight"), "outcome": "held", "reasons": ["paused"]})
        elif entry.get("to") in ("canary", "champion", "rolled_back", "rejected", "previous"):
            marks.append({"t": t, "to": entry["to"], "why": str(entry.get("why") or ""), "by": entry.get("by")})
    return {"points": points, "marks": marks}


def _scale(lo: float, hi: float, a: float, b: float) -> Any:
    span = (hi - lo) or 1.0
    return lambda v: a + (float(v) - lo) / span * (b - a)


def rollout_chart_svg(series: dict[str, Any], width: int = 760) -> str:
    """The rollout as inline SVG, drawn here (no JavaScript): three panels on one time axis.

    Traffic weight (step line), each variant's error rate and p99 latency per analysis window (points joined by
    lines; amber canary, blue stable), the window's verdict as a coloured dot on the weight line, and a vertical
    line at each state change (red: rollback, green: promotion). Every data point is a ``circle.pt`` with a title.
    """
    e = html.escape
    points, marks = series["points"], series["marks"]
    times = [p["t"] for p in points] + [m["t"] for m in marks]
    if not points:
        return "<p class='muted'>no analysis windows recorded for this version (not canaried)</p>"
    t0, t1 = min(times), max(times)
    left, right, panel_h, gap = 56, width - 12, 90, 26
    x = _scale(t0, t1 if t1 > t0 else t0 + 1, left, right)
    parts: list[str] = []
    panels = [
        ("traffic to canary, %", "weight", None, (0.0, 100.0), lambda v: f"{v:.0f}%"),
        ("error rate", "error_rate", ("canary", "stable"), None, lambda v: f"{v:.1%}"),
        ("p99 latency, ms", "p99_latency_s", ("canary", "stable"), None, lambda v: f"{v * 1000:.1f}"),
    ]
    height = len(panels) * (panel_h + gap) + 30
    for i, (title, key, sides, fixed, fmt) in enumerate(panels):
        top = 14 + i * (panel_h + gap)
        bottom = top + panel_h
        if sides is None:
            values = [float(p[key]) for p in points if p.get(key) is not None]
        else:
            values = [float(p[f"{s}_{key}"]) for p in points for s in sides if p.get(f"{s}_{key}") is not None]
        lo, hi = fixed or (0.0, max(values) * 1.15 if values and max(values) > 0 else 1.0)
        y = _scale(lo, hi, bottom, top)
        parts.append(f"<text x='{left}' y='{top - 3}' class='ct'>{e(title)}</text>")
        parts.append(f"<line x1='{left}' y1='{bottom}' x2='{right}' y2='{bottom}' class='ax'/>")
        parts.append(f"<text x='{left - 4}' y='{top + 8}' class='tick' text-anchor='end'>{e(fmt(hi))}</text>")
        parts.append(f"<text x='{left - 4}' y='{bottom}' class='tick' text-anchor='end'>{e(fmt(lo))}</text>")
        if sides is None:
            steps = [(x(p["t"]), y(p[key])) for p in points if p.get(key) is not None]
            # A step line: the weight holds until the next window moves it.
            path = [f"M{steps[0][0]:.1f} {steps[0][1]:.1f}"] + [f"H{px:.1f} V{py:.1f}" for px, py in steps[1:]]
            parts.append(f"<path d='{' '.join(path)}' fill='none' stroke='{WEIGHT_COLOUR}' stroke-width='2'/>")
            for p in points:
                if p.get(key) is None:
                    continue
                colour = VERDICT_COLOURS.get(str(p.get("outcome")), "#6b7280")
                tip = f"{p.get(key)}%: {p.get('outcome')} → {p.get('action') or ''}; " + "; ".join(map(str, p["reasons"]))
                parts.append(f"<circle class='pt verdict' data-series='verdict' data-outcome='{e(str(p.get('outcome')))}'"
                             f" cx='{x(p['t']):.1f}' cy='{y(p[key]):.1f}' r='5' fill='{colour}'>"
                             f"<title>{e(tip)}</title></circle>")
        else:
            for side, colour in zip(sides, (CANARY_COLOUR, STABLE_COLOUR), strict=True):
                pts = [(x(p["t"]), y(p[f"{side}_{key}"]), p) for p in points if p.get(f"{side}_{key}") is not None]
                if len(pts) > 1:
                    d = " ".join(f"{'M' if j == 0 else 'L'}{px:.1f} {py:.1f}" for j, (px, py, _) in enumerate(pts))
                    parts.append(f"<path d='{d}' fill='none' stroke='{colour}' stroke-width='1.5'/>")
                for px, py, p in pts:
                    tip = f"{side}: {fmt(float(p[f'{side}_{key}']))} ({p.get(f'{side}_requests')} requests)"
                    parts.append(f"<circle class='pt' data-series='{side}_{key}' cx='{px:.1f}' cy='{py:.1f}' r='3'"
                                 f" fill='{colour}'><title>{e(tip)}</title></circle>")
    bottom_all = 14 + len(panels) * (panel_h + gap) - gap
    for m in marks:
        colour = {"rolled_back": "#dc2626", "champion": "#16a34a", "rejected": "#dc2626"}.get(m["to"], "#6b7280")
        label = {"rolled_back": "rollback", "champion": "promoted", "canary": "canary start"}.get(m["to"], m["to"])
        mx = x(m["t"])
        parts.append(f"<g class='mark' data-to='{e(m['to'])}'><line x1='{mx:.1f}' y1='8' x2='{mx:.1f}' "
                     f"y2='{bottom_all}' stroke='{colour}' stroke-dasharray='4 3'/>"
                     f"<text x='{mx + 3 if mx < right - 80 else mx - 3:.1f}' y='{bottom_all + 12}' class='tick' "
                     f"text-anchor='{'start' if mx < right - 80 else 'end'}' fill='{colour}'>{e(label)}</text>"
                     f"<title>{e(m['to'])}: {e(m['why'])}</title></g>")
    from datetime import datetime

    for t, anchor in ((t0, "start"), (t1, "end")):
        stamp = datetime.fromtimestamp(t, tz=UTC).strftime("%H:%M:%S")
        parts.append(f"<text x='{x(t):.1f}' y='{height - 2}' class='tick' text-anchor='{anchor}'>{stamp} UTC</text>")
    legend = (f"<text x='{right}' y='10' class='tick' text-anchor='end'><tspan fill='{CANARY_COLOUR}'>■ canary</tspan>"
              f" <tspan fill='{STABLE_COLOUR}'>■ stable</tspan> <tspan fill='{WEIGHT_COLOUR}'>■ weight</tspan></text>")
    return (f"<svg class='chart' role='img' aria-label='rollout chart' viewBox='0 0 {width} {height}' width='{width}' "
            f"height='{height}' xmlns='http://www.w3.org/2000/svg'>{legend}{''.join(parts)}</svg>")


def curves_svg(curves: dict[str, list[tuple[int, float]]], width: int = 360, height: int = 160) -> str:
    """Training curves (loss and accuracy per epoch, train and validation) as inline SVG."""
    e = html.escape
    if not any(curves.values()):
        return "<p class='muted'>no per-epoch metrics in the run</p>"
    parts = []
    styles = {"loss": ("#2563eb", ""), "val_loss": ("#2563eb", "4 3"), "accuracy": ("#16a34a", ""),
              "val_accuracy": ("#16a34a", "4 3")}
    half = (width - 20) // 2
    for i, group in enumerate((("loss", "val_loss"), ("accuracy", "val_accuracy"))):
        x0 = 10 + i * (half + 10)
        values = [v for k in group for _, v in curves.get(k, [])]
        steps = [s for k in group for s, _ in curves.get(k, [])]
        if not values:
            continue
        xs = _scale(min(steps), max(steps) if max(steps) > min(steps) else min(steps) + 1, x0 + 4, x0 + half - 4)
        ys = _scale(min(values), max(values) if max(values) > min(values) else min(values) + 1, height - 24, 18)
        parts.append(f"<text x='{x0}' y='12' class='ct'>{'loss' if i == 0 else 'accuracy'}</text>")
        for k in group:
            pts = curves.get(k, [])
            colour, dash = styles[k]
            d = " ".join(f"{'M' if j == 0 else 'L'}{xs(s):.1f} {ys(v):.1f}" for j, (s, v) in enumerate(pts))
            parts.append(f"<path d='{d}' fill='none' stroke='{colour}' stroke-dasharray='{dash}' stroke-width='1.5'/>")
            parts += [f"<circle class='pt' data-series='{e(k)}' cx='{xs(s):.1f}' cy='{ys(v):.1f}' r='2.5' "
                      f"fill='{colour}'><title>{e(k)} epoch {s}: {v:.4f}</title></circle>" for s, v in pts]
        parts.append(f"<text x='{x0}' y='{height - 6}' class='tick'>epochs {min(steps)}–{max(steps)}; dashed: "
                     f"validation</text>")
    return (f"<svg class='curves' viewBox='0 0 {width} {height}' width='{width}' height='{height}' "
            f"xmlns='http://www.w3.org/2000/svg'>{''.join(parts)}</svg>")


def confusion_svg(cm: list[list[int]] | None, cell: int = 22) -> str:
    """The confusion matrix of the run's validation split as an inline SVG heat map (rows: true class)."""
    if not cm:
        return "<p class='muted'>no confusion matrix in the run</p>"
    n = len(cm)
    peak = max(max(row) for row in cm) or 1
    off = 18
    parts = []
    for i, row in enumerate(cm):
        total = sum(row) or 1
        for j, v in enumerate(row):
            shade = v / peak
            fill = f"rgba(37,99,235,{shade:.3f})" if i == j else f"rgba(220,38,38,{min(1.0, v / total * 4):.3f})"
            parts.append(f"<rect x='{off + j * cell}' y='{off + i * cell}' width='{cell - 1}' height='{cell - 1}' "
                         f"fill='{fill}'><title>true {i}, predicted {j}: {v}</title></rect>")
        parts.append(f"<text x='{off - 4}' y='{off + i * cell + cell * 0.7:.1f}' class='tick' text-anchor='end'>{i}</text>")
        parts.append(f"<text x='{off + i * cell + cell / 2:.1f}' y='{off - 4}' class='tick' text-anchor='middle'>{i}</text>")
    size = off + n * cell + 4
    return (f"<svg class='confusion' viewBox='0 0 {size} {size + 12}' width='{size}' height='{size + 12}' "
            f"xmlns='http://www.w3.org/2000/svg'>{''.join(parts)}<text x='{off}' y='{size + 10}' class='tick'>"
            f"rows: true class; columns: predicted</text></svg>")
