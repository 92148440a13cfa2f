"""The image recipes without an engine: which requirements each role's dependency layer installs, and the layer
order that keeps a code change from reinstalling TensorFlow (the images themselves: tests/images, marker images)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "deploy" / "docker"
PUBLIC_BASES = {"gateway": "python:3.11-slim", "airflow": "python:3.11-slim", "trainer": "tensorflow/tensorflow:2.21.0-gpu"}


def load_requirements_for() -> ModuleType:
    spec = importlib.util.spec_from_file_location("requirements_for", DOCKER / "requirements_for.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def names(reqs: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def test_role_requirements_come_from_the_extras() -> None:
    mod = load_requirements_for()
    serving = names(mod.requirements(REPO / "pyproject.toml", ["serving", "s3", "postgres"], set()))
    assert {"fastapi", "uvicorn", "mlflow-skinny", "tensorflow-cpu", "s3fs", "psycopg2-binary", "numpy"} <= serving
    assert not {"apache-airflow", "mlflow", "pytest", "moto", "mlcd"} & serving  # mlcd[tf-cpu] expanded, not kept
    training = names(mod.requirements(REPO / "pyproject.toml", ["training", "s3"], set()))
    assert {"mlflow-skinny", "keras", "tensorflow-cpu", "s3fs"} <= training and "fastapi" not in training


def test_a_base_that_has_tensorflow_keeps_its_own() -> None:
    mod = load_requirements_for()
    # `json` always imports: it stands for a base image whose interpreter already has TensorFlow.
    skip = mod.provided("json=tensorflow,tensorflow-cpu;no_such_module_here=keras")
    assert skip == {"tensorflow", "tensorflow-cpu"}
    training = names(mod.requirements(REPO / "pyproject.toml", ["training"], skip))
    assert "tensorflow-cpu" not in training and "tensorflow" not in training and "keras" in training


def test_an_unknown_extra_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    mod = load_requirements_for()
    with pytest.raises(SystemExit, match="no extra 'servng'.*serving"):
        mod.requirements(REPO / "pyproject.toml", ["servng"], set())


@pytest.mark.parametrize("role", sorted(PUBLIC_BASES))
def test_dockerfile_layers_put_the_code_last(role: str) -> None:
    text = (DOCKER / f"Dockerfile.{role}").read_text()
    joined = re.sub(r"\\\n\s*", " ", text)  # one instruction a line (continuations joined)
    lines = [line for line in joined.splitlines() if line and not line.startswith("#")]
    # The base is a build argument whose default is the public image users pull.
    assert lines[0] == f"ARG BASE_IMAGE={PUBLIC_BASES[role]}" and lines[1] == "FROM ${BASE_IMAGE}"
    first_code = next(i for i, line in enumerate(lines) if line.startswith("COPY") and "include" in line.split())
    deps = next(i for i, line in enumerate(lines) if line.startswith("RUN") and "requirements_for.py" in line)
    assert deps < first_code, "dependencies must be installed before the code is copied"
    # Only pyproject.toml, requirements.txt and the helper reach the dependency layer.
    copies_before = [line for line in lines[:deps] if line.startswith("COPY")]
    assert copies_before == ["COPY requirements.txt pyproject.toml deploy/docker/requirements_for.py /opt/mlcd/"]
    assert re.search(r"^USER [1-9][0-9]*:[0-9]+$", text, re.M), "a numeric non-root USER (runAsNonRoot can check it)"
    assert "PIP_NO_CACHE_DIR" not in text and "--mount=type=cache" in text
