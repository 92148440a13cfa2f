"""The whole loop on a cluster configuration (#11.5): Airflow on Celery with two workers, nothing shared on disk.

Every mlcd process is told only the cluster settings (storage in ``s3://``, ledger in Postgres, MLflow on
Postgres + S3, metrics from Prometheus) and has its own empty ``MLCD_HOME``. Batches land in the ``s3://`` landing
zone; the landing watcher's sensor starts ``mlcd_retrain``; the canary is judged from Prometheus (which scrapes
the gateway every second); a one-class model forced past the gate is rolled back by ``mlcd_guard`` reading
Prometheus. Serving is a gateway Deployment per variant behind an HTTPRoute (see tests/rehearsal/kube.py),
moved by the HTTPRoute router through the official Kubernetes client; the stand-in answers a Deployment PATCH
at once and its pods load the model afterwards, so every weight waits for ready pods (asserted all along), and
a version that cannot load is refused with the route left as it was. Task logs stay on the disk of the worker
that ran the task, so they say which worker ran what.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlcd.demo import DEMO_CANARY_SPEC, SMALL_RETRAIN_DEFAULTS, Story, _arm_landing_watch
from mlcd.rollout.router import KubernetesHTTPRouteRouter, RolloutNotReady, kubernetes_api
from tests.pgserver import PostgresServer
from tests.rehearsal.airflow_cluster import WORKERS, AirflowCluster
from tests.rehearsal.conftest import ClusterSettings
from tests.rehearsal.kube import ServingCluster, api_server, ingress, kubeconfig
from tests.rehearsal.services import FEEDBACK_TOKEN, VENV_BIN, Prometheus, Redis, S3Server, cleanup, private_tmp

BATCH_IMAGES = 2000  # per good batch: the first model sees ~1,600 training images
# The demo's small-dataset defaults (10 epochs, floor 0.80, 3-point margin): a weaker champion (2 epochs was tried)
# predicts a class mix far enough from the reference that mlcd_guard rightly rolls it back during its bake.
RETRAIN_DEFAULTS = SMALL_RETRAIN_DEFAULTS
GUARD_BAKE_S = 10
TRAFFIC_RATE = 30


@pytest.fixture(scope="module")
def platform(postgres: PostgresServer, redis: Redis, s3: S3Server, prometheus: Prometheus,
             cluster_settings: ClusterSettings) -> Iterator[dict[str, Any]]:
    """Serving as on Kubernetes (a gateway Deployment per variant, an HTTPRoute, Prometheus scraping both pods)
    and Airflow on Celery; every mlcd process is given the cluster settings only."""
    root = private_tmp("serving")
    serving = ServingCluster(root, cluster_settings.env(), prometheus.write_targets)
    token = secrets.token_urlsafe(16)
    api = api_server(serving, token).start()
    edge = ingress(serving).start()
    config = root / "kubeconfig"  # what a service account's mounted token gives a pod
    config.write_text(kubeconfig(api.url, token))
    mlcd_env = {
        **cluster_settings.env(),
        "MLCD_ROUTER_BACKEND": "kubernetes",
        "MLCD_KUBECONFIG": str(config),
        "MLCD_K8S_NAMESPACE": "mlcd",
        "MLCD_GATEWAY_URL": edge.url,
        "MLCD_METRICS_PROVIDER": "prometheus",
        "MLCD_PROMETHEUS_URL": prometheus.url,
        "MLCD_PROMETHEUS_SELECTOR": 'namespace="rehearsal"',
        "MLCD_CANARY_SPEC": json.dumps(DEMO_CANARY_SPEC),
        "MLCD_GUARD_BAKE_S": str(GUARD_BAKE_S),
        "MLCD_RETRAIN_DEFAULTS": json.dumps(RETRAIN_DEFAULTS),
        "MLCD_SETTLE_S": "1",
        "AIRFLOW_CONN_FS_DEFAULT": '{"conn_type": "fs", "extra": {"path": "/"}}',
    }
    cluster = AirflowCluster(private_tmp("airflow"), postgres.url("airflow"),
                             "db+" + postgres.url("airflow"), redis.url, mlcd_env)
    try:
        cluster.start()
        yield {"cluster": cluster, "serving": serving, "gateway": edge.url, "kubeconfig": str(config)}
    finally:
        cluster.stop()
        edge.stop()
        api.stop()
        serving.stop()
        cleanup(cluster.root, root)


def _predict(url: str) -> dict[str, Any]:
    import httpx
    import numpy as np

    r = httpx.post(f"{url}/predict", json={"images": np.zeros((1, 28, 28), dtype=int).tolist()}, timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _label(url: str, answer: dict[str, Any]) -> Any:
    import httpx

    pred = answer["predictions"][0]
    return httpx.post(f"{url}/feedback", json={"prediction_id": pred["prediction_id"], "label": pred["class"]},
                      headers={"Authorization": f"Bearer {FEEDBACK_TOKEN}"}, timeout=30)


def _finished(story: Story, dag_id: str, run_id: str, timeout: float = 900) -> dict[str, str]:
    return story.wait_finished(dag_id, run_id, timeout=timeout)


def _errors(cluster: AirflowCluster, run_id: str) -> list[str]:
    """The error events of a run's task logs, from whichever worker wrote them (for a failure's message)."""
    lines = []
    for worker in WORKERS:
        for path in cluster.log_folder(worker).glob(f"dag_id=*/run_id={run_id}/task_id=*/*.log"):
            for line in path.read_text(errors="replace").splitlines():
                if '"level":"error"' in line:
                    lines.append(f"{worker} {path.parent.name}: {line[:600]}")
    return lines


# Signal method: a timeout raises in the test, so the fixtures still stop every service they started.
@pytest.mark.timeout(2400, method="signal")
def test_batches_in_s3_go_through_retrain_canary_and_guard_on_two_workers(
        platform: dict[str, Any], cluster_settings: ClusterSettings, prometheus: Prometheus, s3: S3Server,
        reference_data: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlcd.data.batch import save_batch
    from mlcd.data.ledger import Ledger
    from mlcd.registry import ModelRegistry
    from mlcd.settings import get_settings

    cluster: AirflowCluster = platform["cluster"]
    serving: ServingCluster = platform["serving"]
    for key, value in cluster_settings.env().items():  # this process lands batches as a producer would
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLCD_HOME", str(tmp_path / "producer"))
    settings = get_settings()
    api = cluster.api()
    urls = {"mlflow": cluster_settings.tracking_uri, "gateway": platform["gateway"], "airflow": cluster.url}
    story = Story(settings, api, urls)
    timings: dict[str, float] = {}
    start = time.monotonic()
    cluster.wait_dags(api, {"mlcd_retrain", "mlcd_landing_watch", "mlcd_guard"})
    _arm_landing_watch(api)
    for dag_id in ("mlcd_retrain", "mlcd_guard"):
        story.remember_runs(dag_id)
    timings["dags parsed, sensor armed"] = time.monotonic() - start
    x, y = reference_data.x_train, reference_data.y_train
    first = save_batch(tmp_path / "batch-1.npz", x[:BATCH_IMAGES], y[:BATCH_IMAGES])
    second = save_batch(tmp_path / "batch-2.npz", x[BATCH_IMAGES:2 * BATCH_IMAGES], y[BATCH_IMAGES:2 * BATCH_IMAGES])
    registry = ModelRegistry(cluster_settings.tracking_uri, settings.model_name)
    router = KubernetesHTTPRouteRouter(kubernetes_api(platform["kubeconfig"]), rollout_timeout_s=30)

    # Turn 1: a batch lands in s3:// -> the sensor starts mlcd_retrain -> the first champion.
    story.land(first)
    assert settings.landing_uri.startswith("s3://")
    run = story.wait_new_run("mlcd_retrain", timeout=300)
    states = _finished(story, "mlcd_retrain", run)
    assert states["_run"] == "success", (states, _errors(cluster, run))
    champion = registry.get_alias_version("champion")
    assert champion is not None
    timings["turn 1 (bootstrap)"] = time.monotonic() - start
    # A version whose pods can never load (nothing registered under it): the real gateway pod stays unready, the
    # router gives up and leaves the route as it was (fail closed), the stable pod serves on.
    before = router.get_routes()
    with pytest.raises(RolloutNotReady, match="not ready after"):
        router.set_routes(champion, "9999", 0)
    assert router.get_routes() == before and serving.served_version("mlcd-gateway-stable") == champion
    timings["unloadable canary refused"] = time.monotonic() - start
    accepted = [r for r in Ledger(cluster_settings.ledger_url).list() if r.state == "accepted"]
    assert [r.name for r in accepted] == ["batch-1.npz"]
    assert str(accepted[0].stored_path).startswith("s3://")

    # Turn 2: live traffic; a second batch -> canary judged from Prometheus -> promoted.
    traffic = subprocess.Popen(
        [str(VENV_BIN / "python"), "-m", "mlcd.cli", "traffic", "--url", platform["gateway"], "--rate",
         str(TRAFFIC_RATE), "--duration", "1800", "--feedback"],
        env={**os.environ, "MLCD_FEEDBACK_TOKEN": FEEDBACK_TOKEN},
        stdout=open(tmp_path / "traffic.log", "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
    try:
        early = _predict(platform["gateway"])  # labelled only after the stable pod that served it was replaced
        story.land(second)
        run = story.wait_new_run("mlcd_retrain", timeout=300)
        states = _finished(story, "mlcd_retrain", run)
        assert states["_run"] == "success", (states, _errors(cluster, run))
        assert states.get("canary") == "success", states
        promoted = registry.get_alias_version("champion")
        assert promoted is not None and int(promoted) > int(champion)
        record = registry.get_state(promoted)
        assert record.last_event("canary_step") is not None, record.history  # steps judged from Prometheus
        timings["turn 2 (canary, promote)"] = time.monotonic() - start
        # One gateway process per variant: the canary Deployment served the new version, then the stable one.
        assert ("mlcd-gateway-canary", promoted) in serving.rollouts, serving.rollouts
        assert serving.rollouts[-1] == ("mlcd-gateway-stable", promoted), serving.rollouts
        # last_over_time: the replaced stable pod's series went stale when its Deployment rolled to the new version.
        served = prometheus.query('sum by (variant, version) '
                                  '(last_over_time(mlcd_gateway_requests_total{namespace="rehearsal"}[1h]))')
        pairs = {(s["metric"].get("variant"), s["metric"].get("version")) for s in served}
        assert {("stable", champion), ("canary", promoted)} <= pairs, served

        # Feedback on a cluster: the pod that served `early` is gone (the stable Deployment rolled to the promoted
        # version), yet its label is taken, once, by whichever pod the route's /feedback rule picks.
        assert early["version"] == champion and serving.served_version("mlcd-gateway-stable") == promoted
        assert _label(platform["gateway"], early).status_code == 200
        assert _label(platform["gateway"], early).status_code == 409
        # Either variant's pod takes any label, and only one of them counts it.
        fresh = _predict(platform["gateway"])
        canary_pod, stable_pod = (serving.url_of(d) for d in ("mlcd-gateway-canary", "mlcd-gateway-stable"))
        assert canary_pod is not None and stable_pod is not None
        assert _label(canary_pod, fresh).status_code == 200
        replay = _label(stable_pod, fresh)
        assert replay.status_code == 409 and "already labelled" in replay.text
        # The traffic's labels went through the authenticated /feedback rule to both Services during the canary.
        assert serving.routed.get(("/feedback", "mlcd-gateway-canary"), 0) > 0, serving.routed
        assert serving.routed.get(("/feedback", "mlcd-gateway-stable"), 0) > 0, serving.routed

        # Turn 3: a one-class model forced past the gate -> canary -> mlcd_guard rolls it back from Prometheus.
        story.remember_runs("mlcd_guard")
        run = api.trigger("mlcd_retrain", {"model": "mlcd.training.faulty:BlindModel", "epochs": 1,
                                           "force_promote": True})["dag_run_id"]
        story.seen_runs["mlcd_retrain"].add(run)
        states = _finished(story, "mlcd_retrain", run)
        guard_run = story.wait_guard_rollback(timeout=300)
        assert guard_run is not None, "mlcd_guard did not roll the one-class canary back"
        broken = max(int(v["version"]) for v in registry.status()["versions"])
        # The guard's own verdict, from Prometheus' counters: a breach of this version (the canary task, judging
        # the same counters, may have rolled it back a moment earlier; the guard's rollback is then a no-op).
        watched = api.get(f"/api/v2/dags/mlcd_guard/dagRuns/{guard_run}/taskInstances/watch/xcomEntries/"
                          "return_value?deserialize=true")["value"]
        assert watched["decision"] == "breach" and str(watched["version"]) == str(broken), watched
        state = registry.get_state(str(broken)).state
        assert getattr(state, "value", state) == "rolled_back", state
        assert registry.get_alias_version("champion") == promoted
        assert serving.weights()["mlcd-gateway-canary"] == 0  # users back on the stable Deployment
        assert ("mlcd-gateway-canary", str(broken)) in serving.rollouts
        timings["turn 3 (guard rollback)"] = time.monotonic() - start
    finally:
        traffic.terminate()
        traffic.wait(timeout=30)
        print("rehearsal timings (s since the DAGs were parsed):",
              json.dumps({k: round(v) for k, v in timings.items()}))

    # Weights moved only to Services whose ready pods served the version the route named, all along.
    assert serving.unready_weights == [], serving.unready_weights
    assert serving.refused == [], serving.refused  # and every call the platform made was in the rollout Role
    # Both workers ran mlcd_retrain's tasks, each writing its logs on its own disk only.
    ran = {w: set(cluster.task_logs(w, "mlcd_retrain")) for w in WORKERS}
    assert all(ran.values()), ran
    # Nothing was kept on a worker's disk: no batches, snapshots or quarantine under their MLCD_HOME.
    for worker in WORKERS:
        home = cluster.home_of(worker) / "mlcd-home"
        for folder in ("batches", "snapshots", "quarantine", "ledger.sqlite"):
            assert not (home / folder).exists(), f"{worker} kept {folder} locally"
    assert cluster.dead() == [], cluster.dead()
    assert s3.filesystem().find(f"{cluster_settings.storage_url}/snapshots")
