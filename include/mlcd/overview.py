"""The operator's view of one model, gathered from where each fact lives. Airflow-free.

Registry (aliases, states, verdicts, rollbacks), the router (current traffic weights), the ledger (quarantined
batches) and links (MLflow runs, Data Docs). Each section is gathered on its own: a server that is down turns
its section into an "unavailable" line instead of failing the page.
"""

from __future__ import annotations

import html
from datetime import UTC
from enum import Enum
from typing import Any
from urllib.parse import quote

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
        out = {"stable": current.stable, "canary": current.canary, "canary_weight": current.canary_weight}
        holdback = getattr(current, "holdback", None)  # the guard's control variant, where the router has one
        if holdback:
            out["holdback"] = holdback
        return out

    def quarantine() -> list[dict[str, Any]]:
        from mlcd.data.ledger import QUARANTINED, Ledger

        return [
            {"name": r.name, "batch_hash": r.batch_hash, "reason": r.reason, "decided_at": r.decided_at}
            for r in Ledger(settings.ledger_path).list(QUARANTINED)
        ]

    def drift() -> dict[str, Any] | None:
        from mlcd.guard.signals import read_drift

        status = read_drift(settings.gateway_url)
        return status.as_dict() if status is not None else None

    reg = _section(registry)

    def details() -> list[dict[str, Any]]:
        if not reg["ok"]:
            raise RuntimeError("registry unavailable")
        return version_details(uri, reg["data"]["status"]["versions"], reg["data"]["full_history"],
                               model_name=settings.model_name)

    out = {
        "model_name": settings.model_name,
        "mlflow_url": uri,
        "registry": reg,
        "routes": _section(routes),
        "quarantine": _section(quarantine),
        "details": _section(details),
        "drift": _section(drift),
    }
    out["header"] = page_status(out, settings.guard_bake_s)
    if reg["ok"]:
        reg["data"].pop("full_history", None)
    return out


class PageState(str, Enum):
    """The rollout's overall state, in Argo Rollouts' words (what the header shows first)."""

    HEALTHY = "healthy"  # a champion serves alone; nothing needs a person
    PROGRESSING = "progressing"  # a canary is moving through its steps (or no champion yet: the first run makes one)
    PAUSED = "paused"  # a canary holds its weight (mlcd pause, or failed closed) until resumed
    DEGRADED = "degraded"  # something needs a person: a source unreadable, registry and serving disagree, drift

    def __str__(self) -> str:
        return self.value


def _since_s(t: Any, now: float) -> float | None:
    start = _epoch_s(t) if t else None
    return now - start if start is not None else None


def page_status(data: dict[str, Any], bake_s: float = 300.0, now: float | None = None) -> dict[str, Any]:
    """The header: overall state, current step and weight, drift, bake result, as-of time, and what needs a person
    (each attention item is ``{"level": "error"|"warn", "text"}``, errors first). Pure: reads ``collect_overview``'s
    sections only, so each rule is tested without servers."""
    import time
    from datetime import datetime

    now = time.time() if now is None else now
    attention: list[dict[str, str]] = []
    reg, routes, drift = data["registry"], data["routes"], data.get("drift") or {"ok": False, "error": "not read"}
    out: dict[str, Any] = {"as_of": datetime.fromtimestamp(now, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
                           "step": None, "weight": None, "drift": None, "bake": None, "holdback": None,
                           "champion": None, "canary": None}
    if not reg["ok"]:
        attention.append({"level": "error", "text": f"registry unreadable: {reg['error']}"})
    if not routes["ok"]:
        attention.append({"level": "error", "text": f"gateway unreadable: {routes['error']}"})
    quarantine = data.get("quarantine") or {"ok": True, "data": []}
    if quarantine["ok"] and quarantine["data"]:
        newest = quarantine["data"][-1]
        attention.append({"level": "warn", "text": f"{len(quarantine['data'])} batch(es) quarantined; newest "
                                                   f"{newest['name']}: {newest.get('reason') or 'no reason'}"})
    paused = False
    if reg["ok"]:
        status = reg["data"]["status"]
        history = reg["data"].get("full_history") or reg["data"].get("history") or []
        aliases = status["aliases"]
        champion, canary = aliases.get("champion"), aliases.get("canary")
        out["champion"], out["canary"] = champion, canary
        for problem in status.get("problems") or []:
            attention.append({"level": "error", "text": f"registry: {problem} (mlcd reconcile repairs it)"})
        if canary:
            own = [h for h in history if str(h.get("version")) == str(canary)]
            steps = [h for h in own if h.get("event") == "canary_step"]
            if steps:
                d = steps[-1].get("d") or {}
                out["step"] = (f"window {len(steps)} at {d.get('weight')}%: {d.get('outcome')} -> "
                               f"{d.get('action') or ''}").rstrip(" ->")
            else:
                out["step"] = "canary started; no analysis window finished yet"
            marks = [h.get("event") for h in own if h.get("event") in ("paused", "resumed")]
            paused = bool(marks) and marks[-1] == "paused"
        elif champion:
            promoted = [h for h in history if str(h.get("version")) == str(champion) and h.get("to") == "champion"]
            age = _since_s(promoted[-1].get("t"), now) if promoted else None
            if age is not None and age < bake_s:
                out["bake"] = f"version {champion} in its bake: {bake_s - age:.0f} s of {bake_s:.0f} s left"
            elif age is not None:
                out["bake"] = f"version {champion} passed: no rollback during its {bake_s:.0f} s bake"
        backs = [h for h in history if h.get("to") == "rolled_back"]
        if backs and (_since_s(backs[-1].get("t"), now) or 1e9) < 24 * 3600:
            b = backs[-1]
            baked = " in its bake" if b.get("from") == "champion" else ""
            attention.append({"level": "warn", "text": f"version {b['version']} rolled back{baked} at {b.get('t')} "
                                                       f"by {b.get('by')}: {b.get('why')}"})
            if b.get("from") == "champion" and out["bake"] is None:
                out["bake"] = f"version {b['version']} failed its bake: rolled back"
    if routes["ok"]:
        r = routes["data"]
        out["weight"] = r.get("canary_weight") if r.get("canary") else 0
        out["holdback"] = r.get("holdback")  # the guard's control variant (previous champion), when served
        if reg["ok"] and out["champion"] and r.get("stable") and str(r["stable"]) != str(out["champion"]) \
                and str(r["stable"]) != str(out["canary"]):
            attention.append({"level": "error", "text": f"serving version {r['stable']} as stable, but the "
                                                        f"champion alias is version {out['champion']}"})
    if drift["ok"] and drift["data"] is not None:
        d = drift["data"]
        out["drift"] = "drifted" if d.get("drifted") else "no drift"
        if d.get("drifted"):
            attention.append({"level": "warn", "text": "live inputs drifted from the training data "
                                                       "(mlcd_drift_watch starts a retrain, once per cooldown)"})
    elif drift["ok"]:
        out["drift"] = "not monitored (the gateway exports no drift gauges)"
    else:
        out["drift"] = "unknown (gateway unreadable)"
    errors = any(a["level"] == "error" for a in attention)
    if errors or (out["drift"] == "drifted"):
        state = PageState.DEGRADED
    elif paused:
        state = PageState.PAUSED
    elif out["canary"] or (reg["ok"] and not out["champion"]):
        state = PageState.PROGRESSING
    else:
        state = PageState.HEALTHY
    out["state"] = state.value
    out["attention"] = sorted(attention, key=lambda a: a["level"] != "error")
    return out


def _header_html(h: dict[str, Any], refresh_s: int | None) -> str:
    """The status header: what a person looks at first, then what needs them."""
    e = html.escape
    facts = [("step", h.get("step") or "no canary"),
             ("canary weight", f"{h['weight']}%" if h.get("weight") is not None else "unknown"),
             ("drift", h.get("drift") or "unknown"), ("bake", h.get("bake") or "none")]
    if h.get("holdback"):
        facts.append(("holdback", f"version {h['holdback']}"))
    items = "".join(f"<div><span class='label'>{e(k)}</span> <span data-fact='{e(k)}'>{e(str(v))}</span></div>"
                    for k, v in facts)
    auto = (f"auto-refresh every {refresh_s} s · <a href='?'>stop</a>" if refresh_s
            else "<a href='?refresh=30'>auto-refresh 30 s</a>")
    attention = "".join(f"<li class='{e(a['level'])}'>{e(a['text'])}</li>" for a in h.get("attention") or [])
    return (f"<header id='status' class='status {e(h['state'])}'><div class='state' data-state='{e(h['state'])}'>"
            f"{e(h['state'])}</div><div class='facts'>{items}</div><div class='muted asof'>as of {e(h['as_of'])} · "
            f"<a href='?'>refresh</a> · {auto}</div></header>"
            # An <aside>, not a <section>: section.version:first-of-type must stay the newest version's detail.
            + (f"<aside id='attention'><h2>Needs attention</h2><ul>{attention}</ul></aside>" if attention else ""))


def version_details(tracking_uri: str, versions: list[dict[str, Any]], history: list[dict[str, Any]],
                    limit: int | None = None, model_name: str | None = None) -> list[dict[str, Any]]:
    """For the newest versions: the rollout series, the DAG runs that trained, rolled out and rolled it back, its
    run's curves and confusion matrix (each from where it was recorded: the rollout record, the version's
    ``mlcd.dag_run_id`` tag, MLflow's metric history and artifacts)."""
    from mlflow import MlflowClient

    from mlcd.registry.tags import TAG_DAG_RUN

    limit = DETAIL_VERSIONS if limit is None else limit
    client = MlflowClient(tracking_uri=tracking_uri)
    out = []
    for v in list(reversed(versions))[:limit]:
        own = [h for h in history if str(h.get("version")) == str(v["version"])]
        trained_by = None
        if model_name:
            try:
                trained_by = (client.get_model_version(model_name, str(v["version"])).tags or {}).get(TAG_DAG_RUN)
            except Exception:  # noqa: BLE001 - the other links still stand; the training run's link is missing
                trained_by = None
        runs = dag_runs(own, trained_by)
        detail: dict[str, Any] = {
            "version": v["version"], "state": v["state"], "run_id": v.get("run_id"),
            "dag_run": trained_by or next((h["dag_run"] for h in own if h.get("dag_run")), None),
            "dag_runs": runs, "series": rollout_series(own), "curves": {}, "confusion": None,
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
    links = [f"<a class='mlflow' href='{e(mlflow)}/#/models/{e(model_name)}/versions/{e(v)}' target='_blank'>"
             "MLflow version</a>"]
    if d.get("run_id"):
        links.append(f"<a class='mlflow' href='{e(mlflow)}/#/runs/{e(str(d['run_id']))}' target='_blank'>"
                     "MLflow training run</a>")
    runs = d.get("dag_runs")
    if runs is None and d.get("dag_run"):  # a detail gathered without the roles: the run that made it
        runs = [{"role": "trained", "dag_id": "mlcd_retrain", "run_id": d["dag_run"], "by": ""}]
    for r in runs or []:
        if r.get("dag_id"):
            href = f"/dags/{quote(str(r['dag_id']), safe='')}/runs/{quote(str(r['run_id']), safe='')}"
            links.append(f"<a class='dagrun' data-role='{e(r['role'])}' href='{e(href)}' target='_top'>"
                         f"{e(r['role'])}: {e(str(r['dag_id']))} run</a>")
        else:  # a person or the CLI: no DAG to link to, but the run id still identifies the action
            links.append(f"<span class='muted' data-role='{e(r['role'])}'>{e(r['role'])}: run "
                         f"{e(str(r['run_id']))} by {e(str(r.get('by') or '?'))}</span>")
    links.append("<a href='/dags/mlcd_guard/runs' target='_top'>all mlcd_guard runs</a>")
    curves = curves_svg(d.get("curves") or {}) if not d.get("curves_error") else (
        f"<p class='warn'>training curves unavailable: {e(d['curves_error'])}</p>")
    verdicts = [p for p in d["series"]["points"] if p.get("outcome") in VERDICT_COLOURS]
    summary = ", ".join(f"{p.get('weight')}% {p.get('outcome')}" for p in verdicts) or "no analysis windows"
    return (f"<section class='version' id='v{e(v)}'><h3>version {e(v)} · {e(str(d['state']))}</h3>"
            f"<p>{' · '.join(links)}</p><p class='muted'>windows: {e(summary)}</p>"
            f"{rollout_chart_svg(d['series'])}"
            f"<div class='row'><div>{curves}</div><div>{confusion_svg(d.get('confusion'))}</div></div></section>")


def render_overview(data: dict[str, Any], data_docs_href: str = "data-docs/index.html",
                    refresh_s: int | None = None) -> str:
    """The page as self-contained HTML (no external CSS/JS: it must render offline).

    Ordered by what needs a person first: the status header and attention list, serving, quarantined batches,
    then the versions, rollbacks and per-version detail."""
    e = html.escape
    mlflow = data["mlflow_url"].rstrip("/")
    parts = [f"<h1>mlcd · {e(data['model_name'])}</h1>"]
    parts.append(_header_html(data.get("header") or page_status(data), refresh_s))

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
        holdback = f" · holdback: version {e(str(r['holdback']))}" if r.get("holdback") else ""
        parts.append(f"<p>stable: version {e(str(r['stable']))} · canary: {canary}{holdback}</p>")
    else:
        parts.append(f"<p class='warn'>gateway unavailable: {e(routes['error'])}</p>")

    quarantine = data["quarantine"]
    parts.append("<h2 id='quarantine'>Quarantined batches</h2>")
    if quarantine["ok"]:
        parts.append(_table(["batch", "hash", "when", "reason"], [
            [e(q["name"]), e(q["batch_hash"][:12]), e(str(q["decided_at"] or "")), e(str(q["reason"] or ""))]
            for q in reversed(quarantine["data"])
        ]))
    else:
        parts.append(f"<p class='warn'>ledger unavailable: {e(quarantine['error'])}</p>")

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
        ".status{display:flex;gap:1.5rem;align-items:center;flex-wrap:wrap;border:1px solid #d1d5db;"
        "border-left:.5rem solid #6b7280;border-radius:.5rem;padding:.6rem 1rem;margin-bottom:1rem}"
        ".status.healthy{border-left-color:#16a34a}.status.progressing{border-left-color:#2563eb}"
        ".status.paused{border-left-color:#d97706}.status.degraded{border-left-color:#dc2626}"
        ".state{font-size:1.3rem;font-weight:700;text-transform:uppercase}.facts{display:flex;gap:1.25rem;"
        "flex-wrap:wrap;font-size:.9rem}.asof{margin-left:auto}#attention li.error{color:#b91c1c}"
        "#attention li.warn{color:#b45309}#attention ul{margin:.25rem 0 .5rem}"
    )
    refresh = f"<meta http-equiv='refresh' content='{int(refresh_s)}'>" if refresh_s else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'>{refresh}<title>mlcd</title>"
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
            mix = d.get("mix") or {}
            points.append({
                "t": t, "weight": d.get("weight"), "outcome": d.get("outcome"), "action": d.get("action"),
                "reasons": d.get("reasons") or [],
                **{f"{side}_{key}": (d.get(side) or {}).get(key)
                   for side in ("canary", "stable") for key in ("requests", "error_rate", "p99_latency_s")},
                **{k: v for side in ("canary", "stable") for k, v in _mix_fields(side, mix.get(side)).items()},
            })
        elif entry.get("event") == "canary_step_held":
            points.append({"t": t, "weight": d.get("weight"), "outcome": "held", "reasons": ["paused"]})
        elif entry.get("to") in ("canary", "champion", "rolled_back", "rejected", "previous"):
            marks.append({"t": t, "to": entry["to"], "why": str(entry.get("why") or ""), "by": entry.get("by"),
                          "dag_run": entry.get("dag_run")})
    return {"points": points, "marks": marks}


def _mix_fields(side: str, mix: dict[str, Any] | None) -> dict[str, Any]:
    """One variant's window in the chart's terms: class counts (``{class: count}``) and live accuracy.

    Live accuracy is the share of feedback labels the variant's answers matched; ``None`` without feedback (a
    window with no labels has no accuracy, not an accuracy of 0). Windows recorded before the mix was recorded
    have neither.
    """
    if not mix:
        return {}
    classes = {int(k): int(v) for k, v in (mix.get("classes") or {}).items()}
    total = int(mix.get("feedback_total") or 0)
    return {f"{side}_classes": classes, f"{side}_feedback": total,
            f"{side}_accuracy": (int(mix.get("feedback_correct") or 0) / total) if total else None}


# The Airflow DAG behind an actor such as "airflow:mlcd_guard"; other actors (a person through mlcd_control, the
# CLI) name no DAG, so their run is shown as text.
def dag_of(actor: Any) -> str | None:
    text = str(actor or "")
    return text.split(":", 1)[1] or None if text.startswith("airflow:") else None


ROLES = {"registered": "trained", "canary": "rolled out", "canary_step": "rolled out", "champion": "promoted",
         "rolled_back": "rolled back", "rejected": "rejected"}


def dag_runs(history: list[dict[str, Any]], trained_by: str | None = None) -> list[dict[str, Any]]:
    """The DAG runs that acted on a version, in order, each once: ``{"role", "dag_id", "run_id", "by"}``.

    ``trained_by`` is the DAG run tagged on the version by the register task (``mlcd.dag_run``); it trained
    the model in ``mlcd_retrain``. Roles come from the record's entries (rolled out, promoted, rolled back).
    """
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, str | None, str]] = set()

    def add(role: str, dag_id: str | None, run_id: str, by: Any) -> None:
        if (role, dag_id, run_id) not in seen:
            seen.add((role, dag_id, run_id))
            out.append({"role": role, "dag_id": dag_id, "run_id": run_id, "by": str(by or "")})

    if trained_by:
        add("trained", "mlcd_retrain", trained_by, "airflow:mlcd_retrain")
    for entry in history:
        run_id = entry.get("dag_run")
        role = ROLES.get(str(entry.get("event") or entry.get("to") or ""))
        if run_id and role:
            if role == "trained" and any(r["role"] == "trained" for r in out):
                continue  # the version's tag names the run that trained it; one training run per version
            dag = dag_of(entry.get("by"))
            if role == "trained" and dag is None:
                dag = "mlcd_retrain"  # the registered entry carries no actor; only the register task records a run
            add(role, dag, str(run_id), entry.get("by"))
    return out


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
        started = any(m["to"] == "canary" for m in marks)
        ended = next((m for m in reversed(marks) if m["to"] in ("rolled_back", "rejected")), None)
        if started and ended:
            why = f"{ended['to'].replace('_', ' ')} before its first analysis window finished"
        elif started:
            why = "canary started; no analysis window has finished yet"
        elif ended:
            why = f"{ended['to'].replace('_', ' ')} without being canaried"
        else:
            why = "never served as a canary"
        return f"<p class='muted nowindows'>no analysis windows for this version: {html.escape(why)}</p>"
    t0, t1 = min(times), max(times)
    left, right, panel_h, gap = 56, width - 12, 90, 26
    x = _scale(t0, t1 if t1 > t0 else t0 + 1, left, right)
    parts: list[str] = []
    panels = [
        ("traffic to canary, %", "weight", None, (0.0, 100.0), lambda v: f"{v:.0f}%"),
        ("error rate", "error_rate", ("canary", "stable"), None, lambda v: f"{v:.1%}"),
        ("p99 latency, ms", "p99_latency_s", ("canary", "stable"), None, lambda v: f"{v * 1000:.1f}"),
        ("live accuracy (feedback labels)", "accuracy", ("canary", "stable"), (0.0, 1.0), lambda v: f"{v:.0%}"),
        ("predicted-class mix per window (left bar canary, right bar stable)", "mix", ("canary", "stable"),
         (0.0, 1.0), lambda v: f"{v:.0%}"),
    ]
    height = len(panels) * (panel_h + gap) + 30
    spacing = min((b["t"] - a["t"] for a, b in zip(points, points[1:], strict=False)), default=t1 - t0)
    bar_w = max(3.0, min(12.0, (spacing / ((t1 - t0) or 1.0)) * (right - left) / 2.5))
    for i, (title, key, sides, fixed, fmt) in enumerate(panels):
        top = 14 + i * (panel_h + gap)
        bottom = top + panel_h
        if key == "mix":
            parts.append(f"<text x='{left}' y='{top - 3}' class='ct'>{e(title)}</text>")
            parts.append(f"<line x1='{left}' y1='{bottom}' x2='{right}' y2='{bottom}' class='ax'/>")
            parts.append(_mix_bars(points, x, top, bottom, bar_w, right))
            continue
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
                    basis = (f"{p.get(f'{side}_feedback')} labels" if key == "accuracy"
                             else f"{p.get(f'{side}_requests')} requests")
                    tip = f"{side} at {p.get('weight')}%: {fmt(float(p[f'{side}_{key}']))} ({basis})"
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
    verdicts = " ".join(f"<tspan fill='{c}'>● {o}</tspan>" for o, c in VERDICT_COLOURS.items())
    legend = (f"<text x='{right}' y='10' class='tick' text-anchor='end'>window verdict: {verdicts} · "
              f"<tspan fill='{CANARY_COLOUR}'>■ canary</tspan>"
              f" <tspan fill='{STABLE_COLOUR}'>■ stable</tspan> <tspan fill='{WEIGHT_COLOUR}'>■ weight</tspan>"
              " · <tspan fill='#dc2626'>┆ rollback</tspan></text>")
    return (f"<svg class='chart' role='img' aria-label='rollout chart' viewBox='0 0 {width} {height}' width='{width}' "
            f"height='{height}' xmlns='http://www.w3.org/2000/svg'>{legend}{''.join(parts)}</svg>")


# One colour per digit (Tableau 10), so a class keeps its colour across windows and variants.
CLASS_COLOURS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
                 "#bab0ac")


def _mix_bars(points: list[dict[str, Any]], x: Any, top: float, bottom: float, bar_w: float, right: float) -> str:
    """Each window's predicted-class shares as two stacked bars (canary left, stable right) at the window's time.

    Every segment is a ``rect.mix`` carrying its variant, class and count; a window without recorded counts
    draws nothing (older records, or a variant that served nobody in that window).
    """
    e = html.escape
    parts: list[str] = []
    for p in points:
        for side, dx in (("canary", -bar_w - 0.5), ("stable", 0.5)):
            classes = p.get(f"{side}_classes") or {}
            total = sum(classes.values())
            if not total:
                continue
            y = bottom
            for cls in sorted(classes):
                n = classes[cls]
                h = (bottom - top) * n / total
                y -= h
                parts.append(f"<rect class='mix' data-series='{side}_mix' data-class='{cls}' data-count='{n}' "
                             f"x='{x(p['t']) + dx:.1f}' y='{y:.1f}' width='{bar_w:.1f}' height='{h:.1f}' "
                             f"fill='{CLASS_COLOURS[cls % len(CLASS_COLOURS)]}'><title>{e(side)} at {p.get('weight')}%: "
                             f"class {cls} {n}/{total} ({n / total:.0%})</title></rect>")
    legend = "".join(f"<tspan fill='{CLASS_COLOURS[c]}'>■</tspan>{c} " for c in range(10))
    parts.append(f"<text x='{right}' y='{top - 3}' class='tick' text-anchor='end'>class {legend}</text>")
    return "".join(parts)


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
