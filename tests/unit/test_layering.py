"""The package layering, read from the source: ``rollout`` acts, ``guard`` decides, only ``mlcd.airflow`` is glue.

Every import statement counts, including the ones inside functions and under ``TYPE_CHECKING``: a lazy import is
still a dependency, it only fails later.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[2] / "include" / "mlcd"


def imported_modules(path: Path, root: Path = PACKAGE.parent) -> set[str]:
    """Every absolute module name an import statement in ``path`` names (``from a.b import c`` gives ``a.b`` and
    ``a.b.c``, since ``c`` may be a submodule); relative imports are resolved against ``path``'s place under
    ``root``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                parts = list(path.relative_to(root).with_suffix("").parts)[: -node.level]
                base = ".".join([*parts, node.module] if node.module else parts)
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def offenders(paths: list[Path], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    found = {}
    for path in paths:
        bad = sorted(n for n in imported_modules(path) if any(n == f or n.startswith(f + ".") for f in forbidden))
        if bad:
            found[str(path.relative_to(PACKAGE.parent))] = bad
    return found


def modules_under(*parts: str) -> list[Path]:
    paths = sorted(PACKAGE.joinpath(*parts).rglob("*.py"))
    assert paths, f"no modules under {PACKAGE.joinpath(*parts)}"
    return paths


def test_rollout_never_imports_guard_or_airflow() -> None:
    assert offenders(modules_under("rollout"), ("mlcd.guard", "mlcd.airflow", "airflow")) == {}


def test_registry_never_imports_rollout_guard_or_airflow() -> None:
    assert offenders(modules_under("registry"), ("mlcd.rollout", "mlcd.guard", "mlcd.airflow", "airflow")) == {}


def test_core_never_imports_airflow() -> None:
    core = [p for p in modules_under() if PACKAGE / "airflow" not in p.parents]
    assert offenders(core, ("airflow", "mlcd.airflow")) == {}


def test_guard_holds_no_rollout_actions() -> None:
    """The actions moved to ``mlcd.rollout.actions`` with no shim left behind in ``mlcd.guard``."""
    import mlcd.guard
    import mlcd.guard.watch
    import mlcd.rollout.actions

    moved = {"rollback", "_rollback_record", "RollbackResult", "promote", "set_paused", "default_version",
             "_failed_checks"}
    assert moved <= set(vars(mlcd.rollout.actions))
    assert not moved & set(vars(mlcd.guard.watch))
    assert not moved & set(vars(mlcd.guard))
    assert not (PACKAGE / "guard" / "judge.py").exists() and (PACKAGE / "rollout" / "analysis.py").exists()


def test_the_checker_sees_lazy_relative_and_type_checking_imports(tmp_path: Path) -> None:
    """The scan itself can fail: imports inside a function, under TYPE_CHECKING and relative ones are found."""
    probe = tmp_path / "mlcd" / "rollout" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from airflow.sdk import Context\n"
        "def f():\n    from ..guard.watch import Guard\n    import mlcd.airflow.guard\n"
        "from . import spec\n",
        encoding="utf-8",
    )
    names = imported_modules(probe, root=tmp_path)
    assert {"airflow.sdk", "mlcd.guard.watch", "mlcd.guard.watch.Guard", "mlcd.airflow.guard", "mlcd.rollout.spec"} <= names
    assert "typing" in names and "mlcd.rollout" in names
