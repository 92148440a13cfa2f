"""Install mlcd like a user: the built wheel into fresh virtualenvs, one per role, nothing of this checkout on a path.

* ``[airflow]`` with Airflow 3.3.2 under a constraints file, a fresh ``AIRFLOW_HOME`` whose DAG folder holds only the
  two lines of the README's DAG bundle and whose airflow.cfg holds mlcd's settings in ``[mlcd]``: ``airflow dags
  list`` shows every mlcd DAG, ``airflow providers list`` shows mlcd, ``airflow plugins`` the UI plugin, a starting
  DAG processor creates the ``training`` pool, and ``dag.test()`` of ``mlcd_retrain`` runs to success on real data;
* ``[serving]`` alone (no Airflow installed) runs the gateway that run routes to, which then answers V2 ``ready``;
* ``[training]`` alone (no Airflow) runs ``python -m mlcd.training --help``.

Airflow's published constraints file cannot be downloaded while testing, so ``--constraint`` is requirements.txt:
the exact pins of a clean install of the same Airflow 3.3.2 and providers, resolved together (its header says so).
Downloads go through pip's own cache (``PIP_CACHE_DIR``, else ``~/.cache/pip``), so a second run reuses every wheel.
The commands are the README's "Install into your Airflow" section, checked verbatim below.
"""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlcd.mlflow_server import free_port
from tests.badbatches import good_bytes

# Three virtualenvs, each with TensorFlow, on 2 shared cores: the installs dominate (see TIMINGS), not downloads.
pytestmark = [pytest.mark.install, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]
CONSTRAINTS = REPO / "requirements.txt"
DAG_IDS = {"mlcd_retrain", "mlcd_landing_watch", "mlcd_guard", "mlcd_drift_watch", "mlcd_control"}
ADMIN_TOKEN = "install-test-admin-token-0123456789"
# A gate the first model passes for sure: this layer tests the install, test_retrain_dag the model's quality.
RUN_CONF = {"epochs": 1, "gate": {"accuracy_floor": 0.5},
            "canary_spec": {"steps": [50, 100], "analysis_window_s": 4, "min_requests": 15, "min_stable_requests": 15}}

# The README's commands, as run here ($CONSTRAINTS: requirements.txt; $WHEEL: the wheel built from this checkout).
BUILD = 'pip wheel --no-deps --wheel-dir dist .'
INSTALL = {
    "airflow": 'pip install --constraint "$CONSTRAINTS" "apache-airflow==3.3.2" "$WHEEL[airflow]"',
    "serving": 'pip install --constraint "$CONSTRAINTS" "$WHEEL[serving]"',
    "training": 'pip install --constraint "$CONSTRAINTS" "$WHEEL[training]"',
}
BUNDLE = "from mlcd.airflow.dags import mlcd_dags\n\nglobals().update(mlcd_dags())\n"
TIMINGS: dict[str, float] = {}

_DAG_TEST = r"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
run = bag.get_dag("mlcd_retrain").test(run_conf=json.loads(sys.argv[2]))
print("MLCD_RUN " + json.dumps({"state": str(run.state),
                                "tasks": {ti.task_id: str(ti.state) for ti in run.get_task_instances()}}))
"""


def _base_env(home: Path) -> dict[str, str]:
    """A user's shell: no PYTHONPATH into this checkout, no MLCD_* or AIRFLOW_* of the test session."""
    keep = ("PATH", "LANG", "LC_ALL", "TMPDIR", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
    env = {k: v for k, v in os.environ.items() if k in keep or k.startswith("PIP_")}
    env.setdefault("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))  # reused across runs and venvs
    user_pip_conf = Path.home() / ".config" / "pip" / "pip.conf"
    if user_pip_conf.is_file() and "PIP_CONFIG_FILE" not in env:  # the machine's index settings, despite HOME
        env["PIP_CONFIG_FILE"] = str(user_pip_conf)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    # No .pyc compile of every installed module (TensorFlow alone has thousands): the slowest part of each install
    # here, and Python compiles what it imports anyway. An environment switch, so the commands stay the README's.
    env.setdefault("PIP_NO_COMPILE", "1")
    env["HOME"] = str(home)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def _run(cmd: str | list[str], env: dict[str, str], cwd: Path, timeout: float, what: str) -> str:
    start = time.monotonic()
    out = subprocess.run(cmd, shell=isinstance(cmd, str), executable="/bin/bash" if isinstance(cmd, str) else None,
                         env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    TIMINGS[what] = round(time.monotonic() - start, 1)
    assert out.returncode == 0, f"{what}: exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def _venv(root: Path, role: str, wheel: Path) -> tuple[Path, dict[str, str]]:
    """A fresh virtualenv holding only mlcd[role] (and Airflow for the airflow role), by the README's command."""
    venv = root / f"venv-{role}"
    home = root / f"home-{role}"
    home.mkdir()
    env = _base_env(home)
    subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True, timeout=120)  # type: ignore[attr-defined]
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    env["VIRTUAL_ENV"] = str(venv)
    env.update(CONSTRAINTS=str(CONSTRAINTS), WHEEL=str(wheel))
    _run(INSTALL[role], env, cwd=root, timeout=1500, what=f"install [{role}]")
    return venv, env


def _json(out: str) -> Any:
    """The JSON document of an ``airflow ... --output json`` (Airflow's own log lines may come before it)."""
    for line in reversed(out.splitlines()):
        if line.lstrip().startswith(("[", "{")):
            try:
                return json.loads(line)
            except ValueError:
                continue
    raise AssertionError(f"no JSON in: {out[-2000:]}")


def _installed(env: dict[str, str], cwd: Path) -> set[str]:
    listed = _json(_run("pip list --format json", env, cwd, 120, "pip list"))
    return {p["name"].lower().replace("_", "-") for p in listed}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("install")
    yield path
    print(f"\ninstall layer timings (s): {json.dumps(TIMINGS)}", file=sys.stderr)


@pytest.fixture(scope="module")
def wheel(root: Path) -> Path:
    checkout = root / "checkout"  # a copy of the tracked files, as a user's clone: no egg-info, no build/
    checkout.mkdir()
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file() and not source.is_symlink():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            (checkout / name).write_bytes(source.read_bytes())
    env = _base_env(root)
    _run(BUILD, env | {"PATH": f"{Path(sys.executable).parent}:{env['PATH']}"}, checkout, 600, "build wheel")
    (built,) = (checkout / "dist").glob("mlcd-*.whl")
    return built


def test_the_readme_install_section_is_what_this_test_runs() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Install into your Airflow", 1)[1].split("\n## ", 1)[0]
    for command in (BUILD, *INSTALL.values()):
        assert command in section, command
    for line in BUNDLE.strip().splitlines():
        assert line in section, line


def test_the_wheel_ships_the_suites_the_plugin_and_the_dag_factory(wheel: Path) -> None:
    listing = subprocess.run(["unzip", "-l", str(wheel)], capture_output=True, text=True, check=True).stdout
    for member in ("mlcd/expectations/mnist_batch.json", "mlcd/airflow/plugin.py", "mlcd/airflow/listener.py",
                   "mlcd/airflow/dags/__init__.py", "mlcd/airflow/dags/retrain.py", "mlcd/airflow/dags/guard.py",
                   "mlcd/py.typed"):
        assert member in listing, member
    with zipfile.ZipFile(wheel) as whl:
        (points,) = [n for n in whl.namelist() if n.endswith(".dist-info/entry_points.txt")]
        text = whl.read(points).decode()
        (meta,) = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = whl.read(meta).decode()
    assert "[apache_airflow_provider]\nprovider_info = mlcd.airflow.provider:get_provider_info" in text
    assert "[airflow.plugins]\nmlcd = mlcd.airflow.plugin:MlcdPlugin" in text
    assert "Classifier: Framework :: Apache Airflow :: Provider" in metadata
    assert "tests/" not in listing and "dags/mlcd.py" not in listing  # the product, not the repository


@pytest.fixture(scope="module")
def serving(root: Path, wheel: Path) -> tuple[Path, dict[str, str]]:
    return _venv(root, "serving", wheel)


@pytest.fixture(scope="module")
def user_home(root: Path) -> Path:
    home = root / "mlcd-home"
    (home / "landing").mkdir(parents=True)
    return home


@pytest.fixture(scope="module")
def gateway(serving: tuple[Path, dict[str, str]], mlflow_server: Any, user_home: Path,
            root: Path) -> Iterator[dict[str, Any]]:
    """The gateway from the [serving] venv alone, for a model no one has registered yet."""
    _, env = serving
    model = f"installed-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = env | {"MLCD_HOME": str(user_home), "MLCD_MODEL_NAME": model, "MLFLOW_TRACKING_URI": mlflow_server.url,
                 "MLCD_ADMIN_TOKEN": ADMIN_TOKEN, "MLCD_DRIFT": "off"}
    log = (root / "gateway.log").open("wb")
    proc = subprocess.Popen(["python", "-m", "mlcd.serving", "--port", str(port)], env=env, cwd=root,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, (root / "gateway.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/v2/health/live", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError("the [serving] gateway never answered /v2/health/live")
        yield {"url": url, "model": model, "log": root / "gateway.log"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def airflow_user(root: Path, wheel: Path, gateway: dict[str, Any], mlflow_server: Any, user_home: Path,
                 reference_data: Any) -> dict[str, Any]:
    """mlcd[airflow] in a fresh venv and AIRFLOW_HOME, set up as the README says; mlcd_retrain run once."""
    venv, env = _venv(root, "airflow", wheel)
    airflow_home = root / "airflow-home"
    dags = airflow_home / "dags"  # Airflow's default dags_folder under AIRFLOW_HOME
    dags.mkdir(parents=True)
    (dags / "mlcd.py").write_text(BUNDLE)
    env = env | {"AIRFLOW_HOME": str(airflow_home), "MLCD_ADMIN_TOKEN": ADMIN_TOKEN}  # the secret: env only
    if os.environ.get("MLCD_DATA"):
        env["MLCD_DATA"] = os.environ["MLCD_DATA"]
    _run("airflow db migrate", env, root, 600, "airflow db migrate")  # also writes the default airflow.cfg
    # mlcd's settings in airflow.cfg's [mlcd] section, as a deployment keeps them next to Airflow's own.
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(airflow_home / "airflow.cfg")
    cfg["core"]["load_examples"] = "False"
    if not cfg.has_section("mlcd"):
        cfg.add_section("mlcd")
    cfg["mlcd"].update(home=str(user_home), model_name=gateway["model"], gateway_url=gateway["url"],
                       mlflow_uri=mlflow_server.url)
    with (airflow_home / "airflow.cfg").open("w") as f:
        cfg.write(f)
    assert "training" not in _run("airflow pools list --output json", env, root, 120, "airflow pools list")
    # The DAG processor parses the bundle into the database (what `dags list` reads), and as it starts (like the
    # scheduler and the triggerer) the plugin's listener creates the pool.
    _run("airflow dag-processor --num-runs 1", env, root, 600, "airflow dag-processor --num-runs 1")
    listed = _json(_run("airflow dags list --output json", env, root, 300, "airflow dags list"))
    errors = _json(_run("airflow dags list-import-errors --output json", env, root, 300, "import errors"))
    providers = _json(_run("airflow providers list --output json", env, root, 300, "airflow providers list"))
    plugins = _json(_run("airflow plugins --output json", env, root, 300, "airflow plugins"))
    pool = _json(_run("airflow pools get training --output json", env, root, 120, "airflow pools get"))

    x, y = reference_data.x_train, reference_data.y_train
    (user_home / "landing" / "batch-1.npz").write_bytes(good_bytes(x[:3000], y[:3000]))
    out = _run([str(venv / "bin" / "python"), "-c", _DAG_TEST, str(dags), json.dumps(RUN_CONF)], env, root, 900,
               "dag.test mlcd_retrain")
    (line,) = [x for x in out.splitlines() if x.startswith("MLCD_RUN ")]
    return {"venv": venv, "env": env, "dags": listed, "errors": errors, "providers": providers, "plugins": plugins,
            "pool": pool,
            "run": json.loads(line[len("MLCD_RUN "):])}


def test_airflow_lists_every_mlcd_dag_the_provider_and_the_plugin(airflow_user: dict[str, Any]) -> None:
    assert airflow_user["errors"] == [], airflow_user["errors"]
    assert {d["dag_id"] for d in airflow_user["dags"]} >= DAG_IDS
    assert {d["fileloc"].rsplit("/", 1)[-1] for d in airflow_user["dags"] if d["dag_id"] in DAG_IDS} == {"mlcd.py"}
    assert any(p["package_name"] == "mlcd" for p in airflow_user["providers"]), airflow_user["providers"]
    assert any(p["name"] == "mlcd" for p in airflow_user["plugins"]), airflow_user["plugins"]
    (pool,) = airflow_user["pool"]
    assert pool["pool"] == "training" and int(pool["slots"]) == 1


def test_mlcd_retrain_runs_to_success_in_the_installed_airflow(airflow_user: dict[str, Any]) -> None:
    run = airflow_user["run"]
    assert run["state"] == "success", run["tasks"]
    assert run["tasks"]["train"] == "success" and run["tasks"]["register"] == "success"


def test_serving_alone_pulls_no_airflow_and_serves_the_new_champion(serving: tuple[Path, dict[str, str]],
                                                                  gateway: dict[str, Any],
                                                                  airflow_user: dict[str, Any], root: Path) -> None:
    _, env = serving
    installed = _installed(env, root)
    assert not {p for p in installed if p.startswith("apache-airflow")}, "the gateway's venv pulled Airflow"
    assert "great-expectations" not in installed and "mlcd" in installed
    deadline = time.monotonic() + 120
    while True:  # the run routed stable to version 1: the gateway loads it, then it is ready
        r = httpx.get(f"{gateway['url']}/v2/health/ready", timeout=5)
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert r.status_code == 200 and r.json() == {"ready": True}, (r.text, gateway["log"].read_text()[-2000:])
    ready = httpx.get(f"{gateway['url']}/v2/models/{gateway['model']}/ready", timeout=5)
    assert ready.status_code == 200, ready.text


def test_training_alone_pulls_no_airflow_and_runs_the_trainer_entrypoint(root: Path, wheel: Path) -> None:
    venv, env = _venv(root, "training", wheel)
    installed = _installed(env, root)
    assert not {p for p in installed if p.startswith("apache-airflow")}, "the trainer's venv pulled Airflow"
    out = _run([str(venv / "bin" / "python"), "-m", "mlcd.training", "--help"], env, root, 300, "mlcd.training --help")
    assert "--snapshot" in out and "usage: python -m mlcd.training" in out
    # mlcd's [training] asks for no FastAPI (tests/unit/test_provider_package.py); MLflow's client (mlflow-skinny 3)
    # still requires it, so it is installed here: that is MLflow's dependency, not the trainer's.
