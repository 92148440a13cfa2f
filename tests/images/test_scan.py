"""The images' installed packages against the known vulnerabilities (#29.4): ``pip-audit`` on each image's freeze.

Policy (what fails, stated once here and in the README):

* **fails**: a known vulnerability with a fixed release (``fix_versions`` non-empty) in a package the role names
  itself: a requirement of mlcd's extras that built the image (``/opt/mlcd/image-requirements.txt`` in the image),
  so the fix is ours to take by raising a pin;
* **reported, not failed**: every other finding (a transitive dependency's, or one with no fix yet), as a warning
  in the test run's summary and in ``$MLCD_HOME/images/audit-<role>.json``, which CI keeps.

pip-audit has no severities (PyPI's advisory data carries none): "a fix exists and the package is ours to pin"
is the line. A finding accepted on purpose goes in :data:`ACCEPTED`, with its reason.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from tests.images.test_images import canonical, run_in

# vulnerability id -> why it is accepted (none today).
ACCEPTED: dict[str, str] = {}
PIP_AUDIT = Path(sys.executable).with_name("pip-audit")
AUDIT_CACHE = Path.home() / ".cache" / "mlcd" / "pip-audit"


def _pip_audit(reqs: Path, service: str) -> list[dict[str, Any]]:
    done = subprocess.run([str(PIP_AUDIT), "-r", str(reqs), "--no-deps", "--disable-pip", "--format", "json",
                           "--vulnerability-service", service, "--progress-spinner", "off",
                           "--cache-dir", str(AUDIT_CACHE)], capture_output=True, text=True, timeout=900)
    # Exit 1 means "vulnerabilities found" (the JSON is on stdout); no JSON at all is a failure to audit.
    try:
        return list(json.loads(done.stdout).get("dependencies", []))
    except ValueError:
        return [{"name": "*", "skip_reason": f"pip-audit -s {service} exit {done.returncode}: {done.stderr[-300:]}"}]


def _safety_db_file() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("safety_db")
    assert spec and spec.submodule_search_locations, "safety-db is not installed (requirements.txt pins it)"
    return Path(next(iter(spec.submodule_search_locations))) / "insecure_full.json"


def _offline_advisories(frozen: list[str]) -> list[dict[str, Any]]:
    """The same shape as pip-audit's JSON, from the advisory file of the ``safety-db`` package (PyPI).

    A vulnerable range with an upper bound (``<2.20.0``) means a fixed release exists: that bound is its fix.
    Read as a file: the package's own ``__init__`` opens its data by a relative path and fails on import.
    """
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    data = json.loads(_safety_db_file().read_text())
    index = {canonical(name): entries for name, entries in data.items() if not name.startswith("$")}
    out: list[dict[str, Any]] = []
    for line in frozen:
        name, _, version = line.partition("==")
        vulns = []
        for entry in index.get(canonical(name), []):
            for rng in entry.get("specs", []):
                try:
                    hit = Version(version) in SpecifierSet(rng)
                except (InvalidVersion, ValueError):
                    continue
                if hit:
                    # "<2.20.0": fixed in 2.20.0; "<=2.19.1": fixed in the first release after 2.19.1.
                    bounds = [part.strip() for part in rng.split(",") if part.strip().startswith("<")]
                    fixes = [f">{b[2:]}" if b.startswith("<=") else b[1:] for b in bounds]
                    vulns.append({"id": entry.get("cve") or entry["id"], "fix_versions": fixes})
                    break
        out.append({"name": name, "version": version, "vulns": vulns})
    return out


def audit(frozen: list[str], workdir: Path) -> tuple[str, list[dict[str, Any]]]:
    """Known vulnerabilities of exact pins: ``(source, [{name, version, vulns: [{id, fix_versions}]}])``.

    pip-audit asks PyPI's advisory API, then OSV; a machine that reaches neither (this one reaches PyPI's package
    index only) falls back to the ``safety-db`` advisory file, whose date the source names: a stale source is
    reported as such, never taken for a clean bill.
    """
    reqs = workdir / "frozen.txt"
    reqs.write_text("".join(f"{line}\n" for line in frozen))
    for service in ("pypi", "osv"):
        packages = _pip_audit(reqs, service)
        audited = [p for p in packages if "skip_reason" not in p]
        if len(audited) >= 0.9 * len(frozen):
            return f"pip-audit -s {service}", packages
    import datetime

    meta = json.loads(_safety_db_file().read_text())["$meta"]
    day = datetime.datetime.fromtimestamp(meta["timestamp"], datetime.UTC).date()
    return f"safety-db advisories of {day} (pip-audit's services unreachable here)", _offline_advisories(frozen)


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("role", ["gateway", "trainer", "airflow"])
def test_image_has_no_fixable_vulnerability_in_what_it_pins(role: str, built_images: dict[str, float],
                                                            tmp_path: Path) -> None:
    """pip-audit of the image's own ``pip freeze`` (what it runs, not what requirements.txt says)."""
    frozen = [line for line in run_in(role, ["pip", "freeze", "--disable-pip-version-check"], writable=[]).splitlines()
              if "==" in line and not line.lower().startswith("mlcd==")]  # mlcd is not on PyPI: nothing to look up
    assert len(frozen) > 20, frozen
    declared = run_in(role, ["cat", "/opt/mlcd/image-requirements.txt"], writable=[])
    own = {canonical(m.group(1)) for m in (re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
                                           for line in declared.splitlines()) if m}
    own.discard("mlcd")
    assert own, declared

    source, packages = audit(frozen, tmp_path)
    assert len([p for p in packages if "skip_reason" not in p]) >= len(frozen) * 0.9, (source, packages[:5])
    failing, reported = [], []
    for package in packages:
        for vuln in package.get("vulns", []):
            if vuln["id"] in ACCEPTED:
                continue
            finding = (f"{package['name']}=={package['version']}: {vuln['id']}"
                       f" (fixed in {', '.join(vuln.get('fix_versions') or []) or 'no release yet'})")
            if vuln.get("fix_versions") and canonical(package["name"]) in own:
                failing.append(finding)
            else:
                reported.append(finding)
    out = Path(os.environ.get("MLCD_HOME", tmp_path)) / "images" / f"audit-{role}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"role": role, "source": source, "packages": len(packages), "failing": failing,
                               "reported": reported}, indent=1))
    print(f"{role} image: {len(packages)} packages audited by {source}: {len(failing)} failing, {len(reported)} reported")
    if not source.startswith("pip-audit"):
        warnings.warn(f"{role} image audited by {source}: stale advisory data", stacklevel=1)
    for finding in reported:
        warnings.warn(f"{role} image: {finding} (transitive or unfixed: reported, not failed)", stacklevel=1)
    assert not failing, f"{role} image: fixable vulnerabilities in packages it pins: {failing}"


def test_the_scan_sees_a_known_vulnerability(tmp_path: Path) -> None:
    """The scanner is live (not a silent no-op): an old pin with a published, fixed advisory is reported."""
    source, packages = audit(["requests==2.19.0"], tmp_path)  # CVE-2018-18074, fixed in 2.20.0
    vulns = [v for p in packages for v in p.get("vulns", [])]
    assert any(v["id"] in ("CVE-2018-18074", "PYSEC-2018-28", "GHSA-x84v-xcm2-53pg") and v.get("fix_versions")
               for v in vulns), (source, packages)
