"""The images layer (marker ``images``): the project's own images, built from this checkout and run by podman."""

from __future__ import annotations

import pytest

from tests.rehearsal.containers import ensure_images

ROLES = ("gateway", "trainer", "airflow")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The whole directory is one layer: marker `images` (pyproject), in make test's side process. The first test
    # to ask for the images pays for their build: a cold one (empty wheelhouse, no layers) takes ~20 min here.
    for item in items:
        if "tests/images/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.images)
            item.add_marker(pytest.mark.timeout(2700, method="signal"))


@pytest.fixture(scope="session")
def built_images() -> dict[str, float]:
    """All three images, built (or found up to date) once per session; role -> seconds the build took."""
    seconds = ensure_images(*ROLES)
    print(f"images built: {', '.join(f'{role} {s:.0f}s' for role, s in seconds.items())}")
    return seconds
