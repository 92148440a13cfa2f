"""mlcd as a provider package: the provider info Airflow reads, the ``[mlcd]`` config section, the DAG factory's ids."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def _settings_env_names() -> set[str]:
    source = (REPO / "include" / "mlcd" / "settings.py").read_text()
    return set(re.findall(r'_env\("(MLCD_[A-Z_]+)"', source))


def test_provider_info_validates_against_airflows_own_schema() -> None:
    import airflow
    import jsonschema

    from mlcd.airflow.provider import get_provider_info

    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    info = get_provider_info()
    jsonschema.validate(info, schema)
    assert info["plugins"] == [{"name": "mlcd", "plugin-class": "mlcd.airflow.plugin.MlcdPlugin"}]
    assert set(info["config"]) == {"mlcd"}


def test_config_section_lists_every_setting_but_the_secrets() -> None:
    from mlcd.airflow.provider import OPTIONS
    from mlcd.settings import ENV_ONLY_SETTINGS

    names = _settings_env_names()
    assert "MLCD_MODEL_NAME" in names and "MLCD_ADMIN_TOKEN" in names  # the regexp still reads the source
    assert {f"MLCD_{key.upper()}" for key in OPTIONS} == names - ENV_ONLY_SETTINGS


def test_pyproject_registers_the_provider_the_plugin_and_the_classifier() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "Framework :: Apache Airflow :: Provider" in project["classifiers"]
    points = project["entry-points"]
    assert points["apache_airflow_provider"] == {"provider_info": "mlcd.airflow.provider:get_provider_info"}
    assert points["airflow.plugins"] == {"mlcd": "mlcd.airflow.plugin:MlcdPlugin"}
    extras = project["optional-dependencies"]
    assert {"airflow", "serving", "training", "training-gpu", "s3", "gcs", "postgres"} <= set(extras)

    def names(extra: str) -> set[str]:
        out = set()
        for req in extras[extra]:
            name = re.split(r"[<>=!;\[ ]", req, maxsplit=1)[0].lower()
            out |= names(req[len("mlcd[") : req.index("]")]) if name == "mlcd" else {name}
        return out

    for role in ("serving", "training", "training-gpu"):
        assert not {n for n in names(role) if n.startswith("apache-airflow")}, role
    for role in ("training", "training-gpu"):
        assert "fastapi" not in names(role), role  # MLflow's own client may still bring it: never mlcd
    assert "tensorflow-cpu" not in names("training-gpu")  # the GPU image's own tensorflow stays alone
    assert "sqlalchemy" in {re.split(r"[<>=]", d)[0].lower() for d in project["dependencies"]}


def test_package_data_holds_the_suites() -> None:
    from mlcd.settings import load_settings

    suites = sorted(p.name for p in load_settings().expectations_dir.glob("*.json"))
    assert "mnist_batch.json" in suites
    assert load_settings().expectations_dir == REPO / "include" / "mlcd" / "expectations"


@pytest.fixture
def airflow_cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cfg = tmp_path / "airflow.cfg"
    monkeypatch.setenv("AIRFLOW_CONFIG", str(cfg))
    for name in _settings_env_names():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AIRFLOW__MLCD__MODEL_NAME", raising=False)
    monkeypatch.setenv("MLCD_HOME", str(tmp_path / "home"))  # no saved state of a checkout's .mlcd answers instead
    return cfg


def test_settings_read_the_mlcd_section_of_airflow_cfg(airflow_cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlcd.settings import load_settings

    airflow_cfg.write_text("[core]\nexecutor = LocalExecutor\n[mlcd]\nmodel_name = from-cfg\nguard_bake_s = 42\n"
                           "training_backend =\nadmin_token = not-a-secret-store\n")
    settings = load_settings()
    assert (settings.model_name, settings.guard_bake_s) == ("from-cfg", 42.0)
    assert settings.training_backend == "local"  # an empty option is the embedded default
    assert settings.admin_token is None  # secrets never come from a file
    monkeypatch.setenv("AIRFLOW__MLCD__MODEL_NAME", "from-airflow-env")
    assert load_settings().model_name == "from-airflow-env"
    monkeypatch.setenv("MLCD_MODEL_NAME", "from-env")
    assert load_settings().model_name == "from-env"  # the environment wins


def test_an_edited_airflow_cfg_is_read_again_and_a_broken_one_is_one_line(airflow_cfg: Path) -> None:
    import os

    from mlcd.settings import load_settings

    airflow_cfg.write_text("[mlcd]\nmodel_name = first\n")
    assert load_settings().model_name == "first"
    airflow_cfg.write_text("[mlcd]\nmodel_name = second\n")
    os.utime(airflow_cfg, ns=(1, 10**18))  # a new mtime even within the clock's resolution
    assert load_settings().model_name == "second"
    airflow_cfg.write_text("[mlcd]\nmodel_name\n")
    os.utime(airflow_cfg, ns=(1, 2 * 10**18))
    with pytest.raises(ValueError, match="not a readable airflow.cfg") as err:
        load_settings()
    assert "\n" not in str(err.value)


def test_no_airflow_cfg_is_the_embedded_default(airflow_cfg: Path) -> None:
    from mlcd.settings import DEFAULT_MODEL_NAME, load_settings

    assert not airflow_cfg.exists()
    assert load_settings().model_name == DEFAULT_MODEL_NAME


def test_the_factory_builds_each_dag_alone_and_refuses_unknown_ids() -> None:
    from mlcd.airflow.dags import DAG_IDS, mlcd_dags

    assert set(DAG_IDS) == {"mlcd_retrain", "mlcd_landing_watch", "mlcd_guard", "mlcd_drift_watch", "mlcd_control"}
    assert list(mlcd_dags(only=["mlcd_guard"])) == ["mlcd_guard"]
    first, second = mlcd_dags()["mlcd_retrain"], mlcd_dags()["mlcd_retrain"]
    assert first is not second  # fresh objects: a bundle's globals never share a DAG with another file
    with pytest.raises(ValueError, match="unknown mlcd DAG ids \\['mlcd_nope'\\]"):
        mlcd_dags(only=["mlcd_nope"])
