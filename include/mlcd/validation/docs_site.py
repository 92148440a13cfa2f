"""The Data Docs site as an operator needs it: every validation kept and listed, and nothing loaded from a CDN.

GX renders each validation to its own page (``validations/<suite>/<run>/<time>/<batch>.html``), but its site
builder knows only the results its (ephemeral, per-process) context holds and cleans the rest away: each new task
deleted the earlier validations' pages, so the quarantined batch's page vanished from the site. After every render
:func:`finish` copies each new page into ``kept/`` (same depth, so its relative links still work; GX never touches
that folder), writes an index of every kept page, newest first, and rewrites each page to render offline: GX's templates
load Bootstrap, jQuery, Font Awesome and Vega from CDNs (unstyled and half empty without a network, and refused
by the page's Content-Security-Policy); the external tags are removed and a small local stylesheet replaces them.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

STYLESHEET = "mlcd-docs.css"
KEPT = "kept"  # validation pages mlcd keeps (GX's validations/ holds only the current process' runs)
INDEX = "index.html"
_EXTERNAL_SCRIPT = re.compile(r"<script\b[^>]*\bsrc=[\"']?(?:https?:)?//[^>]*>\s*</script>", re.IGNORECASE)
_EXTERNAL_LINK = re.compile(r"<link\b[^>]*\bhref=[\"']?(?:https?:)?//[^>]*>", re.IGNORECASE)
_EXTERNAL_IMG = re.compile(r"<img\b[^>]*\bsrc=[\"']?(?:https?:)?//[^>]*>", re.IGNORECASE)
_MARK = "<!-- mlcd: offline -->"
CSS = """body{font-family:system-ui,sans-serif;margin:1rem 1.5rem;color:#1f2937}
table{border-collapse:collapse;width:100%;font-size:.85rem;margin:.5rem 0}
th,td{border-bottom:1px solid #e5e7eb;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f4f6}a{color:#1d4ed8}.text-danger,.fail{color:#b91c1c}.text-success,.pass{color:#15803d}
.card,.panel{border:1px solid #e5e7eb;border-radius:.4rem;padding:.5rem 1rem;margin:.5rem 0}
.navbar,.modal,.cooltip,[data-toggle=modal]{display:none}code,pre{background:#f3f4f6;padding:0 .2rem}
"""


def make_offline(page: Path, root: Path) -> bool:
    """Strip the CDN tags from one rendered page and link the local stylesheet; ``False`` if already done."""
    text = page.read_text(encoding="utf-8", errors="replace")
    if _MARK in text:
        return False
    text = _EXTERNAL_IMG.sub("", _EXTERNAL_LINK.sub("", _EXTERNAL_SCRIPT.sub("", text)))
    href = os.path.relpath(root / STYLESHEET, page.parent)
    tag = f"{_MARK}<link rel='stylesheet' href='{html.escape(href)}'>"
    text = re.sub(r"</head>", tag + "</head>", text, count=1, flags=re.IGNORECASE) if "</head>" in text.lower() \
        else tag + text
    page.write_text(text, encoding="utf-8")
    return True


def validation_pages(root: Path) -> list[Path]:
    """Every kept validation page, newest first (by the run time folder GX names it after)."""
    pages = list((root / KEPT).rglob("*.html")) if (root / KEPT).is_dir() else []
    return sorted(pages, key=lambda p: (p.parent.name, str(p)), reverse=True)


def keep_new_pages(root: Path) -> int:
    """Copy GX's current validation pages into ``kept/`` (a page kept before is left as it is)."""
    import shutil

    copied = 0
    source = root / "validations"
    for page in source.rglob("*.html") if source.is_dir() else []:
        target = root / KEPT / page.relative_to(source)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(page, target)
            copied += 1
    return copied


def _describe(page: Path, root: Path) -> tuple[str, str, str]:
    """(suite, run, time) from GX's ``validations/<suite>/<run>/<time>/<batch>.html`` layout."""
    parts = page.relative_to(root / KEPT).parts
    suite = parts[0] if len(parts) > 1 else ""
    run = parts[1] if len(parts) > 3 else ""
    when = parts[-2] if len(parts) > 2 else ""
    return suite, run, when


def write_index(root: Path) -> Path:
    """The site's index: every validation kept on disk (not only this process'), then the suites."""
    e = html.escape
    rows = []
    for page in validation_pages(root):
        suite, run, when = _describe(page, root)
        href = page.relative_to(root).as_posix()
        rows.append(f"<tr><td>{e(when)}</td><td><a href='{e(href)}'>{e(run or page.stem)}</a></td>"
                    f"<td>{e(suite)}</td></tr>")
    suites = sorted((root / "expectations").rglob("*.html")) if (root / "expectations").is_dir() else []
    suite_links = "".join(f"<li><a href='{e(p.relative_to(root).as_posix())}'>{e(p.stem)}</a></li>" for p in suites)
    body = (f"<h1>Data Docs: every validation</h1><p>{len(rows)} validations, newest first. Each page is the Great "
            "Expectations report of one batch as the validate task judged it.</p>"
            "<table><thead><tr><th>run time (UTC)</th><th>batch (run)</th><th>suite</th></tr></thead><tbody>"
            + ("".join(rows) or "<tr><td colspan='3'>none yet</td></tr>") + "</tbody></table>"
            + (f"<h2>Expectation suites</h2><ul>{suite_links}</ul>" if suite_links else ""))
    index = root / INDEX
    index.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>mlcd Data Docs</title>{_MARK}"
                     f"<link rel='stylesheet' href='{STYLESHEET}'></head><body>{body}</body></html>", encoding="utf-8")
    return index


def finish(root: Path) -> int:
    """After GX rendered: the local stylesheet, every page offline, the index of every validation.

    Returns how many pages were rewritten now (pages done before are left as they are).
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / STYLESHEET).write_text(CSS, encoding="utf-8")
    done = sum(make_offline(p, root) for p in root.rglob("*.html") if p.name != INDEX or p.parent != root)
    keep_new_pages(root)
    write_index(root)
    return done
