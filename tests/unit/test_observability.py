"""The observability bundle (deploy/observability/): rules checked and unit-tested by promtool, the
PrometheusRule equal to them, the dashboard's queries against series the platform exports.

``promtool`` ships with Debian's prometheus package (``.ci/run`` installs it). The unit tests in rules.test.yaml
make the alerts fire for a failing, rolled-back canary, for blind metrics, for a fail-closed move and for a guard
that died mid-watch, and stay quiet otherwise; a copy with an alert broken must fail them (the tests have teeth).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

OBS = Path(__file__).resolve().parents[2] / "deploy" / "observability"
PROMTOOL = shutil.which("promtool")


def _promtool(*args: str, cwd: Path = OBS) -> subprocess.CompletedProcess[str]:
    # Not a skip: without promtool the rules are unchecked, which is a failure (apt-get install prometheus).
    assert PROMTOOL is not None, "promtool missing: apt-get install prometheus (.ci/run installs it)"
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def test_the_rules_pass_promtool_check() -> None:
    done = _promtool("check", "rules", "rules.yaml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_alerts_fire_in_promtool_unit_tests() -> None:
    done = _promtool("test", "rules", "rules.test.yaml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_unit_tests_fail_for_a_broken_alert(tmp_path: Path) -> None:
    """An alert on sum() instead of max() of the per-pod copies, or one that never fires, is caught."""
    rules = (OBS / "rules.yaml").read_text()
    broken = rules.replace('absent(up{job=~"(.*/)?mlcd-gateway"} == 1)', 'absent(up{job=~"(.*/)?mlcd-gateway"})')
    assert broken != rules
    (tmp_path / "rules.yaml").write_text(broken)
    shutil.copy(OBS / "rules.test.yaml", tmp_path / "rules.test.yaml")
    done = _promtool("test", "rules", "rules.test.yaml", cwd=tmp_path)
    assert done.returncode != 0 and "MlcdMetricsBlind" in done.stdout + done.stderr


def test_the_prometheusrule_carries_exactly_the_checked_rules(tmp_path: Path) -> None:
    crd = yaml.safe_load((OBS / "prometheusrule.yaml").read_text())
    assert crd["apiVersion"] == "monitoring.coreos.com/v1" and crd["kind"] == "PrometheusRule"
    assert crd["spec"] == yaml.safe_load((OBS / "rules.yaml").read_text())
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(crd["spec"]))
    done = _promtool("check", "rules", str(tmp_path / "spec.yaml"))
    assert done.returncode == 0, done.stdout + done.stderr


def _alerts() -> dict[str, dict[str, object]]:
    groups = yaml.safe_load((OBS / "rules.yaml").read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def test_every_alert_the_issue_asks_for_is_there_with_a_severity() -> None:
    alerts = _alerts()
    assert {"MlcdCanaryFailing", "MlcdRollbackHappened", "MlcdMetricsBlind", "MlcdFailedClosed", "MlcdInputDrift",
            "MlcdGuardNotRunning"} <= set(alerts)
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name  # type: ignore[index]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name  # type: ignore[index]


def test_rules_and_dashboard_read_only_series_the_platform_exports(tmp_path: Path) -> None:
    """Every metric name in a rule or a panel is one the gateway, its ops collector or a recording rule makes."""
    from prometheus_client import generate_latest

    from mlcd.rollout.opsignals import WATCHING, OpsEvent, record
    from mlcd.serving.metrics import GatewayMetrics
    from mlcd.serving.opsmetrics import OpsCollector

    ledger = str(tmp_path / "ledger.sqlite")
    for event in OpsEvent:  # one of each, through the ledger database, as the platform records them
        record(event, "4", WATCHING, url=ledger)
    metrics = GatewayMetrics()
    OpsCollector(ledger).register(metrics.registry).refresh()
    exported = {line.split()[2] for line in generate_latest(metrics.registry).decode().splitlines()
                if line.startswith("# TYPE")}
    names = set()
    for family in exported:  # what a counter or histogram family is queried as
        names |= {family, f"{family}_total", f"{family}_bucket", f"{family}_count", f"{family}_sum"}
    assert {"mlcd_rollbacks_total", "mlcd_fail_closed_total", "mlcd_guard_watching", "mlcd_ops_signals_up"} <= names
    groups = yaml.safe_load((OBS / "rules.yaml").read_text())["groups"]
    recorded = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    dashboard = json.loads((OBS / "dashboard.json").read_text())
    queries = [r["expr"] for g in groups for r in g["rules"]]
    queries += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queries += [a["expr"] for a in dashboard["annotations"]["list"]]
    promql = {"sum", "max", "by", "rate", "increase", "histogram_quantile", "ignoring", "group_left", "on", "and",
              "absent", "time", "changes", "up", "le", "namespace", "variant", "version", "predicted_class",
              "correct", "feature", "job", "true"}
    for query in queries:
        bare = re.sub(r"\[[^\]]*\]", "", re.sub(r'"[^"]*"', "", query))  # no label values, no [5m] ranges
        for word in re.findall(r"(?<![\w$.])[a-zA-Z_:][a-zA-Z0-9_:]*", bare):
            if word in promql:
                continue
            assert word in names or word in recorded, f"{word!r} in {query!r} is exported by nothing"


def test_the_dashboard_shows_each_variant_side_by_side() -> None:
    dashboard = json.loads((OBS / "dashboard.json").read_text())
    titles = " | ".join(p["title"] for p in dashboard["panels"]).lower()
    for what in ("error", "latency", "class mix", "live accuracy", "share", "rollback"):
        assert what in titles, what
    assert all("variant" in json.dumps(p["targets"]) for p in dashboard["panels"][:6])


def test_the_gateways_export_the_platforms_signals_from_the_ledger(tmp_path: Path) -> None:
    """Recorded by any process (a task, the CLI), seen on every gateway's /metrics; unreadable is up 0, not stale."""
    from prometheus_client import CollectorRegistry, generate_latest

    from mlcd.rollout.opsignals import OpsEvent, record
    from mlcd.serving.opsmetrics import OpsCollector

    ledger = str(tmp_path / "ledger.sqlite")
    heard: list[tuple[str, str | None]] = []
    from mlcd.rollout import opsignals

    opsignals.add_listener(lambda event, version, reason: heard.append((event.value, version)))
    try:
        record(OpsEvent.ROLLBACK, "4", "guard: error ratio", url=ledger)
        record(OpsEvent.ROLLBACK, "5", "canary: verdict fail", url=ledger)
        record(OpsEvent.FAIL_CLOSED, "6", "metrics_blind: unreadable", url=ledger)
        record(OpsEvent.GUARD_POLL, "6", "healthy", url=ledger)
    finally:
        opsignals._LISTENERS.clear()
    assert heard == [("rollback", "4"), ("rollback", "5"), ("fail_closed", "6")]  # polls are no news
    registry = CollectorRegistry()
    collector = OpsCollector(ledger).register(registry)
    collector.refresh()
    text = generate_latest(registry).decode()
    assert "mlcd_rollbacks_total 2.0" in text and "mlcd_fail_closed_total 1.0" in text
    assert "mlcd_guard_watching 0.0" in text and "mlcd_ops_signals_up 1.0" in text  # the guard run finished
    collector.url = "postgresql+psycopg2://mlcd@127.0.0.1:1/mlcd"  # a ledger database that is down
    collector.refresh()
    text = generate_latest(registry).decode()
    assert "mlcd_ops_signals_up 0.0" in text and "mlcd_rollbacks_total 2.0" in text  # last known, flagged
