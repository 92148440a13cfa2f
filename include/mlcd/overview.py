"""The operator's view of one model, gathered from where each fact lives. Airflow-free.

Registry (aliases, states, verdicts, rollbacks), the router (current traffic weights), the ledger (quarantined
batches) and links (MLflow runs, Data Docs). Each section is gathered on its own: a server that is down turns
its section into an "unavailable" line instead of failing the page.
"""

from __future__ import annotations

import html
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
        from mlcd.registry import ModelRegistry

        reg = ModelRegistry(uri, settings.model_name)
        status = reg.status()
        history = reg.history()
        return {
            "status": status,
            "rollbacks": [h for h in history if h.get("to") == "rolled_back"][-20:],
            "verdicts": [v for v in status["versions"] if v.get("verdict")][-10:],
            "history": history[-30:],
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

    return {
        "model_name": settings.model_name,
        "mlflow_url": uri,
        "registry": _section(registry),
        "routes": _section(routes),
        "quarantine": _section(quarantine),
    }


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
        ] for v in reversed(versions[-15:])]
        parts.append("<h2>Versions and gate verdicts</h2>")
        parts.append(_table(["version", "state", "aliases", "verdict", "accuracy", "p-value", "last reason", "MLflow"],
                            rows))
        rollbacks = reg["data"]["rollbacks"]
        parts.append("<h2>Rollbacks</h2>")
        parts.append(_table(["when", "version", "by", "reason"], [
            [e(str(h.get("t", ""))), e(str(h["version"])), e(str(h.get("by", ""))), e(str(h.get("why", "")))]
            for h in reversed(rollbacks)
        ]))

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
        ".value{font-size:1.6rem;font-weight:600}.warn{color:#b45309}"
    )
    return ("<!doctype html><html><head><meta charset='utf-8'><title>mlcd</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
