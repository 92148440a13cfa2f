"""Take docs/mlcd-page.png: the mlcd page of a running `make up`, in headless Chromium.

Needs Debian's chromium and Playwright's Python package (its driver only; the browser is Debian's):
    apt-get install -y chromium && python3 -m venv /tmp/pw && /tmp/pw/bin/pip install playwright
    MLCD_HOME=.mlcd/demo make up
    /tmp/pw/bin/python docs/screenshot.py --home .mlcd/demo --airflow http://127.0.0.1:8080
"""

from __future__ import annotations

import argparse
import json
import urllib.request
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", default=".mlcd")
    parser.add_argument("--airflow", default="http://127.0.0.1:8080")
    parser.add_argument("--out", default=str(Path(__file__).parent / "mlcd-page.png"))
    args = parser.parse_args()
    password = json.loads((Path(args.home) / "run" / "airflow_passwords.json").read_text())["admin"]
    req = urllib.request.Request(f"{args.airflow}/auth/token", method="POST",
                                 data=json.dumps({"username": "admin", "password": password}).encode(),
                                 headers={"Content-Type": "application/json"})
    token = json.loads(urllib.request.urlopen(req, timeout=30).read())["access_token"]

    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": 900},
                                extra_http_headers={"Authorization": f"Bearer {token}"})
        page.goto(f"{args.airflow}/mlcd/", wait_until="networkidle")
        page.screenshot(path=args.out, full_page=True)
        browser.close()
    print(args.out)


if __name__ == "__main__":
    main()
