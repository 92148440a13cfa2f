"""Screenshots of the mlcd page of a running platform, in Debian's headless Chromium (no Playwright, no internet).

Drives Chromium through the DevTools protocol (``--remote-debugging-port``, one websocket) so the page can be
fetched with the Airflow bearer token in a header. Writes ``docs/mlcd-page.png`` (the whole page) and
``docs/mlcd-rollout.png`` (the newest version's rollout section). The e2e test uses the same functions.

    apt-get install -y --no-install-recommends chromium
    MLCD_HOME=.mlcd/demo make up
    .venv/bin/python docs/screenshot.py --home .mlcd/demo --airflow http://127.0.0.1:8080
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent


def airflow_token(airflow: str, home: Path) -> str:
    password = json.loads((home / "run" / "airflow_passwords.json").read_text())["admin"]
    req = urllib.request.Request(f"{airflow}/auth/token", method="POST",
                                 data=json.dumps({"username": "admin", "password": password}).encode(),
                                 headers={"Content-Type": "application/json"})
    return str(json.loads(urllib.request.urlopen(req, timeout=30).read())["access_token"])


class Chromium:
    """A headless Chromium on 127.0.0.1 with one page, driven over the DevTools protocol."""

    def __init__(self, binary: str | None = None, width: int = 1280, height: int = 900) -> None:
        from websockets.sync.client import connect

        self.binary = binary or shutil.which("chromium") or "/usr/bin/chromium"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.profile = tempfile.mkdtemp(prefix="mlcd-chromium-")
        self.proc = subprocess.Popen(
            [self.binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1",
             f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2).read())
                page = next(t for t in targets if t.get("type") == "page")
                break
            except (OSError, StopIteration, ValueError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.close()
                    raise RuntimeError("chromium did not open its DevTools port") from None
                time.sleep(0.2)
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024)
        self._id = 0
        self.call("Page.enable")
        self.call("Network.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return dict(msg.get("result") or {})

    def open(self, url: str, headers: dict[str, str] | None = None, timeout: float = 60) -> int:
        """Load ``url`` (with extra request headers); returns the document's HTTP status."""
        if headers:
            self.call("Network.setExtraHTTPHeaders", headers=headers)
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": "Page.navigate", "params": {"url": url}}))
        status, loaded, deadline = 0, False, time.monotonic() + timeout
        while not loaded and time.monotonic() < deadline:
            msg = json.loads(self.ws.recv(timeout=timeout))
            if msg.get("method") == "Network.responseReceived" and msg["params"].get("type") == "Document":
                status = int(msg["params"]["response"]["status"])
            loaded = msg.get("method") == "Page.loadEventFired"
        return status

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def screenshot(self, path: Path, selector: str | None = None) -> Path:
        """A PNG of the whole page, or of the first element matching ``selector``."""
        params: dict[str, Any] = {"format": "png", "captureBeyondViewport": True}
        if selector:
            box = self.evaluate(f"(() => {{const r = document.querySelector({json.dumps(selector)})"
                                ".getBoundingClientRect(); return [r.left + scrollX, r.top + scrollY, r.width, r.height];"
                                "})()")
            params["clip"] = {"x": box[0], "y": box[1], "width": box[2], "height": box[3], "scale": 1}
        else:
            size = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params["clip"] = {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1}
        data = base64.b64decode(self.call("Page.captureScreenshot", **params)["data"])
        path.write_bytes(data)
        return path

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001 - closing a half-open browser
            pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


def take(airflow: str, token: str, out_dir: Path = DOCS) -> dict[str, Any]:
    """Open the page, return what it shows (counts of chart points), and write both screenshots."""
    browser = Chromium()
    try:
        status = browser.open(f"{airflow}/mlcd/", {"Authorization": f"Bearer {token}"})
        facts = browser.evaluate("""(() => ({
            title: document.title,
            charts: document.querySelectorAll('svg.chart').length,
            verdicts: document.querySelectorAll('svg.chart circle.pt.verdict').length,
            points: document.querySelectorAll('svg.chart circle.pt').length,
            rollbacks: document.querySelectorAll("svg.chart g.mark[data-to='rolled_back']").length,
            confusion: document.querySelectorAll('section.version:first-of-type svg.confusion rect').length,
            curves: document.querySelectorAll('section.version:first-of-type svg.curves circle.pt').length,
            accuracy: document.querySelectorAll("svg.chart circle.pt[data-series$='_accuracy']").length,
            mix: document.querySelectorAll('svg.chart rect.mix').length,
            scripts: document.querySelectorAll('script[src]').length,
            first: (document.querySelector('section.version') || {}).id || null,
            state: (document.querySelector('#status .state') || {}).textContent || null,
            header: Object.fromEntries(Array.from(document.querySelectorAll('#status [data-fact]'),
                                                  f => [f.dataset.fact, f.textContent])),
            attention: Array.from(document.querySelectorAll('#attention li'), li => li.textContent),
            // Where each part starts, in CSS pixels from the top of the page (the window is 900 px high).
            top: Object.fromEntries(['#status', '#attention', '#quarantine', 'section.version'].map(
                sel => [sel, document.querySelector(sel) ?
                        document.querySelector(sel).getBoundingClientRect().top + window.scrollY : null])),
            cells: Array.from(document.querySelectorAll('section.version:first-of-type svg.confusion rect title'),
                              t => t.textContent),
            mlflow_links: Array.from(document.querySelectorAll('section.version:first-of-type a.mlflow'),
                                     a => a.getAttribute('href')),
            dag_links: Array.from(document.querySelectorAll('section.version:first-of-type a.dagrun'),
                                  a => [a.dataset.role, a.getAttribute('href')]),
        }))()""")
        facts["status"] = status
        facts["page_png"] = str(browser.screenshot(out_dir / "mlcd-page.png"))
        if facts["first"]:
            facts["rollout_png"] = str(browser.screenshot(out_dir / "mlcd-rollout.png", f"#{facts['first']}"))
        return dict(facts)
    finally:
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", default=".mlcd")
    parser.add_argument("--airflow", default="http://127.0.0.1:8080")
    parser.add_argument("--out", default=str(DOCS))
    args = parser.parse_args()
    print(json.dumps(take(args.airflow, airflow_token(args.airflow, Path(args.home)), Path(args.out)), indent=1))


if __name__ == "__main__":
    main()
