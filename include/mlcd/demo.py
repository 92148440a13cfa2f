"""``make demo``: the whole story on the embedded default, through a real Airflow scheduler.

The demo starts the platform (Airflow api-server, scheduler, dag-processor, triggerer; MLflow; the gateway) on
free loopback ports with its state in ``MLCD_HOME/demo``, then plays four turns and prints a table after each:

1. a first batch lands → the landing watcher's deferrable sensor emits the landing Asset → ``mlcd_retrain``
   validates, trains, gates (floor alone) and bootstraps the first champion;
2. ``mlcd traffic`` sends live requests with feedback; a second batch lands → retrained → gated against the
   champion → canary through the traffic steps → promoted;
3. a corrupt (inverted) batch lands → quarantined with its reason, the run stops at ``validate``;
4. a deliberately broken model (``mlcd.training.faulty:BlindModel``, forced past the gate) reaches canary →
   ``mlcd_guard`` sees it and rolls it back with its evidence.

It ends by stopping what it started; ``MLCD_HOME=.mlcd/demo make up`` brings the same platform back.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlcd.homestate import ADMIN_TOKEN_FILE, FEEDBACK_TOKEN_FILE, forget_platform, record_platform, save_settings
from mlcd.overview import format_number
from mlcd.settings import Settings, get_settings

# Short windows so the story fits in minutes; a deployment keeps the spec's defaults (60 s per step). The canary,
# the guard and the traffic judge requests, not images, so they are the same on every reference dataset.
DEMO_CANARY_SPEC = {"steps": [25, 50, 100], "analysis_window_s": 10, "min_requests": 30, "min_stable_requests": 20}
DEMO_BAKE_S = 30
DEMO_TRAFFIC_RATE = 30  # requests/s: 75 canary requests per 10 s window at 25 %, over min_requests (30)
RUN_TIMEOUT_S = 900


def progress(message: str) -> None:
    print(f"[mlcd demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


@contextmanager
def step(message: str) -> Iterator[None]:
    start = time.monotonic()
    progress(f"{message} ...")
    yield
    progress(f"{message}: done in {time.monotonic() - start:.0f}s")


def table(title: str, header: list[str], rows: list[list[Any]], width: int = 100) -> None:
    cells = [[str(c) if len(str(c)) <= width else str(c)[: width - 3] + "..." for c in row] for row in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *cells, strict=False)]
    print(f"\n== {title} ==")
    print(" | ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=False)))
    print("-+-".join("-" * w for w in widths))
    for row in cells or [["(none)"]]:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)))
    print(flush=True)


# Batch sizes on real MNIST (70,000 images); a smaller reference set is cut in proportion (see DemoPlan).
MNIST_GOOD_BATCH = 8000
MNIST_BAD_BATCH = 1000
MIN_BATCH = 100  # the suite's row-count floor (expectations/mnist_batch.json): smaller is refused for its size
MIN_GOOD_BATCH = 300  # so the first model's frozen test split (~10 %) has a few images of every digit
# A small reference set (under this many images) trains longer and is gated on a lower floor and a wider
# non-inferiority margin, because turn 1's model sees only ~650 training images and the frozen test split has
# ~80-160 images (one image = 0.6-1.2 accuracy points): with 160 images, a challenger with one error fewer than
# the champion has a 95 % loss bound of +0.56 points, so the default 0.2-point margin could never be shown.
SMALL_DATASET = 20_000
SMALL_RETRAIN_DEFAULTS = {"epochs": 10, "batch_size": 32,
                          "gate": {"accuracy_floor": 0.80, "non_inferiority_margin": 0.03}}


@dataclass(frozen=True)
class DemoPlan:
    """What the demo cuts and how it runs, derived from the reference dataset actually loaded."""

    dataset: str  # which dataset and where from, for the tables
    n_images: int
    first: int  # images in the first good batch
    second: int  # images in the second good batch
    inverted: int  # images in the corrupt (inverted) batch
    retrain_defaults: dict[str, Any]  # mlcd_retrain param defaults (MLCD_RETRAIN_DEFAULTS); {} = the DAG's own
    canary_spec: dict[str, Any]
    bake_s: int
    traffic_rate: int

    @classmethod
    def for_reference(cls, ref: Any) -> DemoPlan:
        """8,000 / 8,000 / 1,000 images on MNIST; on a smaller set 45 % / 45 % / 10 % (the bad batch >= 100)."""
        n = int(ref.n_images)
        inverted = min(MNIST_BAD_BATCH, max(MIN_BATCH, n // 10))
        good = min(MNIST_GOOD_BATCH, (n - inverted) // 2)
        if good < MIN_GOOD_BATCH:
            raise ValueError(f"the reference data ({ref.source}) holds {n} images; the demo needs at least "
                             f"{2 * MIN_GOOD_BATCH + MIN_BATCH}")
        return cls(
            dataset=ref.name, n_images=n, first=good, second=good, inverted=inverted,
            retrain_defaults=dict(SMALL_RETRAIN_DEFAULTS) if n < SMALL_DATASET else {},
            canary_spec=dict(DEMO_CANARY_SPEC), bake_s=DEMO_BAKE_S, traffic_rate=DEMO_TRAFFIC_RATE,
        )

    @property
    def short(self) -> str:
        return self.dataset.split(" (")[0]

    def rows(self) -> list[list[Any]]:
        gate = self.retrain_defaults.get("gate", {}).get("accuracy_floor")
        margin = self.retrain_defaults.get("gate", {}).get("non_inferiority_margin")
        training = (f"{self.retrain_defaults['epochs']} epochs, batch {self.retrain_defaults['batch_size']}"
                    if self.retrain_defaults else "the DAG's defaults (3 epochs, batch 128)")
        return [
            ["dataset", self.dataset],
            ["batch 1 (good)", f"{self.first:,} images"],
            ["batch 2 (good)", f"{self.second:,} images"],
            ["batch 3 (inverted)", f"{self.inverted:,} images"],
            ["training", training],
            ["gate accuracy floor", f"{gate} (small dataset)" if gate is not None else "the gate's default"],
            ["gate non-inferiority margin", f"{margin * 100:.0f} accuracy points (small test split)"
             if margin is not None else "the gate's default (0.2 points)"],
            ["canary", f"steps {self.canary_spec['steps']} %, {self.canary_spec['analysis_window_s']} s windows, "
                       f">= {self.canary_spec['min_requests']} canary requests"],
            ["traffic", f"{self.traffic_rate} requests/s with feedback labels"],
            ["guard bake", f"{self.bake_s} s"],
        ]


def write_demo_batches(out: Path, plan: DemoPlan, ref: Any) -> dict[str, Path]:
    """Two good batches cut from the reference data and one inverted (corrupt) batch, sized by the plan."""
    from mlcd.data.batch import save_batch
    from mlcd.data.reference import write_sample_batches

    first, second, third = write_sample_batches(out, [plan.first, plan.second, plan.inverted], seed=7, ref=ref)
    bad = np.load(third, allow_pickle=False)
    inverted = save_batch(out / "batch-inverted.npz", (255 - bad["x"]).astype(np.uint8), bad["y"])
    third.unlink()
    return {"first": first, "second": second, "inverted": inverted}


class PatientApi:
    """The Airflow API client, but a read that times out is retried: on a busy machine the api-server can take
    longer than one request's timeout, and a status poll missing once must not end the demo. Writes are not retried
    (a trigger must not run twice)."""

    READS = frozenset({"dag_runs", "dag_run", "task_instances", "dags", "get"})

    def __init__(self, api: Any, tries: int = 5, pause_s: float = 5.0) -> None:
        self._api = api
        self._tries = tries
        self._pause_s = pause_s

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._api, name)
        if name not in self.READS:
            return attr

        def patient(*args: Any, **kwargs: Any) -> Any:
            for attempt in range(1, self._tries + 1):
                try:
                    return attr(*args, **kwargs)
                except OSError as err:  # URLError, timeouts, refused connections
                    if attempt == self._tries:
                        raise
                    progress(f"Airflow API {name} failed ({err}); retrying in {self._pause_s:.0f}s")
                    time.sleep(self._pause_s)
            raise AssertionError("unreachable")

        return patient


class Story:
    """The demo's handle on the running platform."""

    def __init__(self, settings: Settings, api: Any, urls: dict[str, str]) -> None:
        self.settings = settings
        self.api = api
        self.urls = urls
        self.seen_runs: dict[str, set[str]] = {}

    def remember_runs(self, dag_id: str) -> None:
        self.seen_runs[dag_id] = {r["dag_run_id"] for r in self.api.dag_runs(dag_id)}

    def wait_new_run(self, dag_id: str, timeout: float = 300) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for run in self.api.dag_runs(dag_id):
                if run["dag_run_id"] not in self.seen_runs.setdefault(dag_id, set()):
                    self.seen_runs[dag_id].add(run["dag_run_id"])
                    progress(f"{dag_id} started: {run['dag_run_id']} ({run.get('run_type')})")
                    return str(run["dag_run_id"])
            time.sleep(2)
        raise TimeoutError(f"no new {dag_id} run within {timeout:.0f}s; see {self.settings.logs_dir}")

    def wait_finished(self, dag_id: str, run_id: str, timeout: float = RUN_TIMEOUT_S) -> dict[str, str]:
        """Wait for a run to finish, printing a progress line whenever a task changes state."""
        deadline = time.monotonic() + timeout
        last: dict[str, str] = {}
        start = time.monotonic()
        while time.monotonic() < deadline:
            tis = sorted(self.api.task_instances(dag_id, run_id), key=lambda t: (t.get("start_date") is None,
                                                                                   t.get("start_date") or ""))
            states = {t["task_id"]: str(t.get("state")) for t in tis}
            for task, state in states.items():
                if last.get(task) != state and state not in ("None", "scheduled", "queued"):
                    progress(f"  {dag_id}.{task}: {state} ({time.monotonic() - start:.0f}s)")
            last = states
            run = self.api.dag_run(dag_id, run_id)
            if run["state"] in ("success", "failed"):
                return {**states, "_run": str(run["state"])}
            time.sleep(3)
        raise TimeoutError(f"{dag_id} {run_id} not finished within {timeout:.0f}s; see {self.settings.logs_dir}")

    def wait_guard_rollback(self, timeout: float = 120) -> str | None:
        """The most recent mlcd_guard run whose rollback task succeeded."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for run in self.api.dag_runs("mlcd_guard", limit=5):
                states = {t["task_id"]: t.get("state") for t in self.api.task_instances("mlcd_guard", run["dag_run_id"])}
                if states.get("rollback") == "success":
                    return str(run["dag_run_id"])
            time.sleep(3)
        progress("no mlcd_guard run has rolled back yet")
        return None

    def training_run(self, dag_run_id: str) -> None:
        """The MLflow run the train task logged (its XCom), for the person reading the demo."""
        path = (f"/api/v2/dags/mlcd_retrain/dagRuns/{urllib.parse.quote(dag_run_id)}/taskInstances/train/"
                "xcomEntries/return_value?deserialize=true")
        try:
            value = self.api.get(path).get("value")
            result = json.loads(value) if isinstance(value, str) else value
            progress(f"MLflow run {result['run_id']}: {result.get('run_url') or self.urls['mlflow']} "
                     f"(val_accuracy {result['val_accuracy']:.4f}, {result['train_samples']} training images)")
        except Exception as err:  # the story goes on without the link
            progress(f"MLflow run of {dag_run_id}: not readable from the train task's XCom ({err})")

    def land(self, path: Path) -> None:
        from mlcd.data.landing import LandingZone

        landed = LandingZone(self.settings.landing_uri).land(path)
        progress(f"landed {path.name} -> {landed.uri}")

    def run_table(self, title: str, states: dict[str, str]) -> None:
        rows = [[task, state] for task, state in states.items() if task != "_run"]
        table(f"{title} (run {states['_run']})", ["task", "state"], rows)

    def registry_tables(self) -> None:
        from mlcd.registry import ModelRegistry

        status = ModelRegistry(self.urls["mlflow"], self.settings.model_name).status()
        aliases = status["aliases"]
        table("registry aliases", ["champion", "canary", "previous"],
              [[aliases.get("champion") or "-", aliases.get("canary") or "-", aliases.get("previous") or "-"]])
        table("model versions", ["version", "state", "verdict", "accuracy", "p-value", "last reason"], [
            [v["version"], v["state"], v.get("verdict") or "", format_number(v.get("accuracy")), format_number(v.get("p_value")),
             v.get("reason") or ""] for v in status["versions"]
        ])

    def ledger_table(self) -> None:
        from mlcd.data.ledger import Ledger

        rows = [[r.name, r.state, r.n_images if r.n_images is not None else "", r.batch_hash[:12], r.reason or ""]
                for r in Ledger(self.settings.ledger_path).list()]
        table("batches (ledger)", ["batch", "state", "images", "hash", "reason"], rows, width=120)

    def registry(self) -> Any:
        from mlcd.registry import ModelRegistry

        return ModelRegistry(self.urls["mlflow"], self.settings.model_name)

    def newest_version(self) -> str:
        return str(max((int(v["version"]) for v in self.registry().status()["versions"]), default=0))

    def version_events(self, version: str, title: str) -> None:
        from mlcd.registry import ModelRegistry

        record = ModelRegistry(self.urls["mlflow"], self.settings.model_name).get_state(version)
        rows = []
        for entry in record.history:
            entry = entry if isinstance(entry, dict) else dict(entry.__dict__)
            what = entry.get("to") or entry.get("event") or ""
            details = entry.get("details") or entry.get("d") or {}
            if what == "canary_step" and isinstance(details, dict):
                why = (f"{details.get('weight')}% traffic: {details.get('outcome', '')} -> {details.get('action', '')}; "
                       + "; ".join(details.get("reasons") or []))
            else:
                why = entry.get("why") or json.dumps(details)[:110]
            rows.append([entry.get("t", ""), what, entry.get("by", ""), why])
        table(title, ["when", "what", "by", "why"], rows, width=110)


# What the demo sets for its state and saves with it (mlcd.homestate.SAVED_KEYS).
DEMO_SAVED_KEYS = ("MLCD_CANARY_SPEC", "MLCD_GUARD_BAKE_S", "MLCD_RETRAIN_DEFAULTS", "MLCD_GUARD_THRESHOLDS",
                   "MLCD_DATA")


def _run_secret(home: Path, name: str) -> str:
    """A secret of this state under ``run/`` (mode 600 from its first byte), created once, then reused."""
    from mlcd.platform import write_private

    path = home / "run" / name
    write_private(path, secrets.token_urlsafe(32))
    return path.read_text().strip()


def _prepare_home(base: Settings) -> Path:
    """A fresh demo home; the previous demo's state is kept aside, never deleted in place."""
    home = base.home / "demo"
    if home.exists():
        previous = base.home / "demo.previous"
        shutil.rmtree(previous, ignore_errors=True)  # only the demo's own, generated state
        home.rename(previous)
        progress(f"previous demo state kept in {previous}")
    home.mkdir(parents=True)
    return home


def run_demo() -> int:
    from mlcd.data.reference import load_reference
    from mlcd.mlflow_server import free_port
    from mlcd.platform import AirflowApi, Ports, airflow_password, down, up

    base = get_settings()
    ref = load_reference()
    plan = DemoPlan.for_reference(ref)
    home = _prepare_home(base)
    os.environ.update({
        "MLCD_HOME": str(home),
        "AIRFLOW_HOME": str(home / "airflow"),
        # Kept under run/ (mode 600) as `make up` keeps them, so a second shell with only MLCD_HOME (`mlcd
        # rollback` during or after the demo) finds the admin token, and `make up` on this state reuses them.
        "MLCD_ADMIN_TOKEN": _run_secret(home, ADMIN_TOKEN_FILE),
        "MLCD_FEEDBACK_TOKEN": _run_secret(home, FEEDBACK_TOKEN_FILE),  # the demo's traffic labels its predictions
        "MLCD_GATEWAY_SECRET": _run_secret(home, "gateway_secret"),
        "MLCD_CANARY_SPEC": json.dumps(plan.canary_spec),
        "MLCD_GUARD_BAKE_S": str(plan.bake_s),
        "MLCD_RETRAIN_DEFAULTS": json.dumps(plan.retrain_defaults),
        # The same guard thresholds on every dataset (no special case): the bake compares the new champion with
        # the previous one held back on the same traffic, and the class floor is a null on the distance itself
        # (its lower confidence bound must clear it), so small weak models' noisy distances no longer fail it.
        "MLCD_GUARD_THRESHOLDS": json.dumps({}),
    })
    if ref.origin in ("data/mnist.npz", "Keras cache"):
        # The platform's processes (traffic, guard, drift) look the data up again: pin them to this very file.
        os.environ["MLCD_DATA"] = ref.source
    for var in ("MLCD_LANDING_URI", "MLFLOW_TRACKING_URI"):
        os.environ.pop(var, None)
    # The settings this state is run with live beside it: `MLCD_HOME=<home> make up` re-applies them, so the
    # trigger form and the guard keep the demo's gate, spec and bake instead of the deployment defaults.
    saved = save_settings(home, {k: os.environ.get(k, "") for k in DEMO_SAVED_KEYS})
    settings = get_settings()
    ports = Ports(airflow=free_port(), mlflow=free_port(), gateway=free_port())
    os.environ["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{ports.mlflow}"
    os.environ["MLCD_GATEWAY_URL"] = f"http://127.0.0.1:{ports.gateway}"
    progress(f"state under {home}; reference data: {plan.dataset}; its settings: {saved}")
    table("demo plan (derived from the reference data)", ["what", "value"], plan.rows(), width=120)
    traffic: subprocess.Popen[bytes] | None = None
    try:
        with step("starting Airflow (api-server, scheduler, dag-processor, triggerer), MLflow and the gateway"):
            urls = up(settings, ports)
        record_platform(home, urls)  # another shell with only MLCD_HOME finds this platform while it runs
        api = PatientApi(AirflowApi(urls["airflow"], "admin", airflow_password(settings) or ""))
        story = Story(settings, api, urls)
        progress(f"Airflow UI {urls['airflow']} (login {urls['login']}) · MLflow {urls['mlflow']} · "
                 f"gateway {urls['gateway']}")
        with step("waiting for the DAGs to be parsed"):
            _wait_dags(api, {"mlcd_retrain", "mlcd_landing_watch"})
        with step("waiting for the landing watcher's sensor to be armed"):
            _arm_landing_watch(api)
        for dag_id in ("mlcd_retrain", "mlcd_guard"):
            story.remember_runs(dag_id) if _has_dag(api, dag_id) else None
        with step("cutting demo batches from the reference dataset"):
            batches = write_demo_batches(home / "demo-batches", plan, ref)

        # Turn 1 ---------------------------------------------------------------------------------------
        progress("TURN 1: the first batch lands; the data-arrival sensor starts mlcd_retrain")
        story.land(batches["first"])
        run = story.wait_new_run("mlcd_retrain")
        story.run_table(f"turn 1: mlcd_retrain on {batches['first'].name} ({plan.first:,} images of {plan.short})",
                        story.wait_finished("mlcd_retrain", run))
        story.training_run(run)
        story.ledger_table()
        story.registry_tables()

        # Turn 2 ---------------------------------------------------------------------------------------
        progress("TURN 2: live traffic starts; a second batch lands; the new model is canaried and promoted")
        from mlcd.envroles import Role, env_for

        traffic = subprocess.Popen(
            [sys.executable, "-m", "mlcd.cli", "traffic", "--url", urls["gateway"], "--rate", str(plan.traffic_rate),
             "--duration", "900", "--feedback"], env=env_for(Role.TRAFFIC, os.environ),  # the feedback token only
            stdout=open(settings.logs_dir / "traffic.log", "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )
        story.land(batches["second"])
        run = story.wait_new_run("mlcd_retrain")
        story.run_table(f"turn 2: mlcd_retrain on {batches['second'].name} ({plan.second:,} images of {plan.short})",
                        story.wait_finished("mlcd_retrain", run))
        story.training_run(run)
        story.registry_tables()
        promoted = story.registry().get_alias_version("champion") or story.newest_version()
        story.version_events(promoted, f"rollout record of version {promoted}")
        if _has_dag(api, "mlcd_guard"):
            progress(f"mlcd_guard watched the canary and now bakes the new champion for {plan.bake_s}s")
            guard = story.wait_new_run("mlcd_guard")
            story.run_table("turn 2: mlcd_guard (healthy: nothing to roll back)",
                            story.wait_finished("mlcd_guard", guard))

        # Turn 3 ---------------------------------------------------------------------------------------
        progress("TURN 3: a corrupt (inverted) batch lands")
        story.land(batches["inverted"])
        run = story.wait_new_run("mlcd_retrain")
        story.run_table(f"turn 3: mlcd_retrain on {batches['inverted'].name} ({plan.inverted:,} inverted images of {plan.short})",
                        story.wait_finished("mlcd_retrain", run))
        story.ledger_table()
        progress(f"quarantined copies and reason.json: {settings.quarantine_dir}")

        # Turn 4 ---------------------------------------------------------------------------------------
        if _has_dag(api, "mlcd_guard"):
            progress("TURN 4: a broken model (answers one class for every image) is forced past the gate")
            run = api.trigger("mlcd_retrain", {"model": "mlcd.training.faulty:BlindModel", "epochs": 1,
                                               "force_promote": True})["dag_run_id"]
            story.seen_runs["mlcd_retrain"].add(run)
            progress(f"mlcd_retrain triggered by hand: {run}")
            story.run_table("turn 4: mlcd_retrain (its canary stops: the guard rolled it back)",
                            story.wait_finished("mlcd_retrain", run))
            # The guard run that acted is whichever was watching when the canary began (runs queue per Asset).
            acted = story.wait_guard_rollback()
            if acted:
                story.run_table(f"turn 4: mlcd_guard {acted}", story.wait_finished("mlcd_guard", acted))
            story.registry_tables()
            broken = story.newest_version()
            story.version_events(broken, f"rollout record of version {broken} (rolled back, with its evidence)")
        else:
            progress("TURN 4 skipped: mlcd_guard is not installed in this checkout")
        return 0
    finally:
        if traffic is not None:
            traffic.terminate()
        with step("stopping the platform"):
            down(settings)
            forget_platform(home)
        progress(f"state of this demo: {home}")
        progress(f"look again: MLCD_HOME={home} make up   (Airflow UI with the mlcd page, MLflow UI, gateway)")
        progress(f"  then:     MLCD_HOME={home} .venv/bin/mlcd status   (and mlcd history, mlcd batches)")
        progress(f"Data Docs: {settings.data_docs_dir / 'index.html'}   logs: {settings.logs_dir}")


def _has_dag(api: Any, dag_id: str) -> bool:
    return any(d["dag_id"] == dag_id for d in api.dags())


def _wait_dags(api: Any, wanted: set[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = {d["dag_id"] for d in api.dags()}
        if wanted <= found:
            for dag_id in found:
                api.unpause(dag_id)
            return
        time.sleep(2)
    raise TimeoutError(f"DAGs {sorted(wanted)} not parsed within {timeout:.0f}s")


def _arm_landing_watch(api: Any, timeout: float = 600) -> None:
    """Land nothing before the sensor watches: a sensor that started while the api-server was still coming up
    (a busy machine) fails its try and would only retry minutes later, after the demo gave up waiting. Each failed
    try is cleared once, so the next one starts now."""
    deadline = time.monotonic() + timeout
    cleared: set[tuple[str, Any]] = set()
    while time.monotonic() < deadline:
        for run in api.dag_runs("mlcd_landing_watch", limit=5):
            tis = {t["task_id"]: t for t in api.task_instances("mlcd_landing_watch", run["dag_run_id"])}
            ti = tis.get("wait_for_batch") or {}
            state = ti.get("state")
            if state in ("deferred", "running") and run["state"] == "running":
                return
            key = (run["dag_run_id"], ti.get("try_number"))
            if state in ("up_for_retry", "failed") and key not in cleared:
                progress(f"mlcd_landing_watch.wait_for_batch is {state} after try {ti.get('try_number')} (the "
                         "api-server did not answer it in time); clearing it so it watches now")
                api._request("POST", "/api/v2/dags/mlcd_landing_watch/clearTaskInstances", {
                    "dag_run_id": run["dag_run_id"], "task_ids": ["wait_for_batch"], "dry_run": False,
                    "only_failed": False, "reset_dag_runs": True})
                cleared.add(key)
        time.sleep(2)
    raise TimeoutError(f"mlcd_landing_watch's sensor is not watching after {timeout:.0f}s; see the scheduler log")
