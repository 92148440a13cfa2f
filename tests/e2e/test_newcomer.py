"""The newcomer's path: a fresh clone with no ``../shared`` and no ``MLCD_DATA`` runs the README's ``make demo``.

The committed HEAD of this checkout is cloned into a temporary folder, ``make demo`` runs there with a fresh HOME
(no ``~/.keras``) and every ``MLCD_*``/``AIRFLOW_*``/``MLFLOW_*`` variable unset, so the demo falls back to
scikit-learn's 1,797 digits and must still play all four turns. The assertions read what it printed and the
state it left behind: the ledger, and the MLflow registry straight from its SQLite file.

The already-built virtualenv (``sys.prefix``) is reused, never reinstalled or re-pointed: the clone gets a tiny
``.venv`` whose ``.pth`` puts the clone's ``include/`` first and the built venv's site-packages after it, console
scripts rewritten to that interpreter, and the Makefile's ``.installed`` stamp, so ``make`` skips the install.
(The Makefile's own install would run ``pip install -e .`` and re-point the built venv's ``mlcd`` at the clone.)
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO_TIMEOUT_S = 2400  # measured: 19 min on 2 cores at load 12 (other jobs), less when idle; stops a hung demo

# The module fixture runs the whole demo inside the first test, so that test's timeout must cover it.
pytestmark = [pytest.mark.e2e, pytest.mark.newcomer, pytest.mark.timeout(DEMO_TIMEOUT_S + 300)]
KEEP_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER", "LOGNAME", "SHELL", "TERM")


def venv_fingerprint(prefix: Path) -> dict[str, str]:
    """What the clone must not change in the built venv: its mlcd install and the Makefile's stamp."""
    site = Path(sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)}))
    watched = sorted(site.glob("__editable__*mlcd*")) + sorted(site.glob("mlcd-*.dist-info/*"))
    watched += [prefix / "bin" / "mlcd", prefix / "bin" / ".installed"]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() + f"@{p.stat().st_mtime_ns}"
            for p in watched if p.is_file()}


def clone_head(dest: Path) -> str:
    """A clone of this checkout's committed HEAD (also when CI checked out a detached commit)."""
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()
    subprocess.run(["git", "init", "--quiet", str(dest)], check=True)
    subprocess.run(["git", "-C", str(dest), "fetch", "--quiet", "--depth", "1", f"file://{REPO}", "HEAD"], check=True)
    subprocess.run(["git", "-C", str(dest), "checkout", "--quiet", "FETCH_HEAD"], check=True)
    cloned = subprocess.run(["git", "-C", str(dest), "rev-parse", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    assert cloned == head, (cloned, head)
    return head


def borrow_venv(clone: Path, built: Path) -> Path:
    """A ``.venv`` in the clone that runs the clone's code on the built venv's packages; nothing is installed."""
    venv = clone / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    built_site = Path(sysconfig.get_path("purelib", vars={"base": str(built), "platbase": str(built)}))
    # Plain paths, not site dirs: the built venv's editable mlcd .pth (its own checkout) is never read.
    (site / "mlcd_newcomer.pth").write_text(f"{clone / 'include'}\n{built_site}\n")
    python = venv / "bin" / "python"
    for script in sorted((built / "bin").iterdir()):
        target = venv / "bin" / script.name
        if target.exists() or not script.is_file() or script.name.startswith(("python", "activate", "pip")):
            continue
        try:
            first, rest = script.read_text().split("\n", 1)
        except (UnicodeDecodeError, ValueError):
            continue
        if first.startswith("#!") and "python" in first:  # a console script: same body, the clone's interpreter
            target.write_text(f"#!{python}\n{rest}")
            target.chmod(0o755)
    (venv / "bin" / ".installed").touch()  # newer than requirements.txt and pyproject.toml: make skips the install
    return venv


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("newcomer")
    clone = root / "mlcd"
    assert not (root / "shared").exists()  # no ../shared beside the clone, as on a user's machine
    head = clone_head(clone)
    built = Path(sys.prefix)
    before = venv_fingerprint(built)
    borrow_venv(clone, built)
    home = root / "home"
    home.mkdir()
    env = {k: os.environ[k] for k in KEEP_ENV if k in os.environ}
    env.update({"HOME": str(home), "PYTHONUNBUFFERED": "1"})  # a fresh HOME: no ~/.keras, no MLCD_DATA
    start = time.monotonic()
    try:
        done = subprocess.run(["make", "demo"], cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=DEMO_TIMEOUT_S)
        output, rc = done.stdout, done.returncode
    except subprocess.TimeoutExpired as err:
        output = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        rc = -1
    seconds = time.monotonic() - start
    (root / "demo.log").write_text(output)
    return {"clone": clone, "head": head, "output": output, "rc": rc, "seconds": seconds,
            "state": clone / ".mlcd" / "demo", "built": built, "before": before}


def test_make_demo_runs_to_the_end_on_the_scikit_learn_digits(newcomer) -> None:  # type: ignore[no-untyped-def]
    output, rc = str(newcomer["output"]), newcomer["rc"]
    assert rc == 0, f"make demo exit {rc} after {newcomer['seconds']:.0f}s:\n{output[-6000:]}"
    assert "Traceback" not in output
    assert "pip install" not in output  # the built venv was reused, nothing installed
    assert "using scikit-learn's 1,797 real digits" in output
    assert "reference data: scikit-learn digits (1,797 images" in output
    for turn in ("TURN 1", "TURN 2", "TURN 3", "TURN 4"):
        assert turn in output
    assert "turn 1: mlcd_retrain on batch-001.npz (809 images of scikit-learn digits) (run success)" in output
    assert "turn 2: mlcd_retrain on batch-002.npz (809 images of scikit-learn digits) (run success)" in output
    # A quarantine is a correct refusal, not an outage: the run succeeds with validate skipped.
    assert "turn 3: mlcd_retrain on batch-inverted.npz (179 inverted images of scikit-learn digits) (run success)" in output
    assert "rolled back, with its evidence" in output
    # mlcd_retrain took the demo's small-dataset defaults (MLCD_RETRAIN_DEFAULTS) for its asset-triggered runs.
    assert ">= floor 0.8000" in output


def test_the_demo_leaves_a_champion_a_rolled_back_version_and_a_quarantined_batch(newcomer) -> None:  # type: ignore[no-untyped-def]
    from mlcd.data.ledger import Ledger
    from mlcd.registry import ModelRegistry
    from mlcd.settings import DEFAULT_MODEL_NAME

    assert newcomer["rc"] == 0, "make demo failed; see the test above"
    state = Path(str(newcomer["state"]))
    batches = {r.name: r for r in Ledger(state / "ledger.sqlite").list()}
    assert {n: r.state for n, r in batches.items()} == {
        "batch-001.npz": "accepted", "batch-002.npz": "accepted", "batch-inverted.npz": "quarantined"}
    assert [batches[n].n_images for n in ("batch-001.npz", "batch-002.npz", "batch-inverted.npz")] == [809, 809, 179]
    assert "inverted" in (batches["batch-inverted.npz"].reason or "")

    # The platform is down; the registry is read straight from MLflow's SQLite store.
    status = ModelRegistry(f"sqlite:///{state / 'mlflow' / 'mlflow.db'}", DEFAULT_MODEL_NAME).status()
    states = {v["version"]: v["state"] for v in status["versions"]}
    assert list(states.values()).count("rolled_back") == 1, states
    champion = status["aliases"].get("champion")
    assert champion and states[champion] == "champion", (status["aliases"], states)
    assert not status["problems"], status["problems"]
    rolled_back = next(v for v in status["versions"] if v["state"] == "rolled_back")
    assert int(rolled_back["version"]) > int(champion)  # the broken model came after the promoted one


def test_the_built_venv_is_untouched(newcomer) -> None:  # type: ignore[no-untyped-def]
    assert venv_fingerprint(Path(str(newcomer["built"]))) == newcomer["before"]
    where = subprocess.run([str(Path(str(newcomer["built"])) / "bin" / "python"), "-c",
                            "import mlcd, sys; print(mlcd.__file__)"], capture_output=True, text=True, check=True,
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}).stdout
    assert str(newcomer["clone"]) not in where  # still the built venv's own checkout, not the (deleted) clone


def test_make_up_on_the_demo_state_shows_the_demos_params(newcomer) -> None:  # type: ignore[no-untyped-def]
    """`MLCD_HOME=.mlcd/demo make up`, as the demo's last lines say: the trigger form has the demo's settings."""
    import json

    from mlcd.demo import SMALL_RETRAIN_DEFAULTS
    from mlcd.mlflow_server import free_port
    from mlcd.platform import AirflowApi

    assert newcomer["rc"] == 0, "make demo failed; see the first test"
    clone, state = Path(str(newcomer["clone"])), Path(str(newcomer["state"]))
    saved = json.loads((state / "settings.json").read_text())
    assert json.loads(saved["MLCD_RETRAIN_DEFAULTS"]) == SMALL_RETRAIN_DEFAULTS
    ports = {"MLCD_AIRFLOW_PORT": str(free_port()), "MLCD_MLFLOW_PORT": str(free_port()),
             "MLCD_GATEWAY_PORT": str(free_port())}
    env = {k: os.environ[k] for k in KEEP_ENV if k in os.environ}
    env.update({"HOME": str(clone.parent / "home"), "MLCD_HOME": str(state), **ports})
    up = subprocess.run(["make", "up"], cwd=clone, env=env, capture_output=True, text=True, timeout=900)
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        assert "settings saved with this state" in up.stdout and "MLCD_RETRAIN_DEFAULTS" in up.stdout
        password = json.loads((state / "run" / "airflow_passwords.json").read_text())["admin"]
        api = AirflowApi(f"http://127.0.0.1:{ports['MLCD_AIRFLOW_PORT']}", "admin", password)
        deadline, params = time.monotonic() + 180, None
        while time.monotonic() < deadline and params is None:
            try:
                params = api.get("/api/v2/dags/mlcd_retrain/details")["params"]
            except OSError:  # not parsed yet
                time.sleep(3)
        assert params is not None
        assert params["epochs"]["value"] == SMALL_RETRAIN_DEFAULTS["epochs"]
        assert params["batch_size"]["value"] == SMALL_RETRAIN_DEFAULTS["batch_size"]
        assert params["gate"]["value"] == SMALL_RETRAIN_DEFAULTS["gate"]
        # MLflow's links back to the page follow this platform, not the demo's temporary port.
        assert "versions relinked to this page" in up.stdout
    finally:
        subprocess.run(["make", "down"], cwd=clone, env=env, capture_output=True, text=True, timeout=300)
