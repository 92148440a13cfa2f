"""The validating process's memory stays bounded whatever a landed file declares (issue 14).

``mlcd validate`` and ``mlcd intake`` run as child processes, exactly as an operator or a worker runs them, and
their peak resident memory is read from the kernel when they exit (``os.wait4`` in a small wrapper process gives
the rusage of that child alone; see ``tests.badbatches.run_measured``). Before bounded decoding the zip bomb
alone took ``mlcd validate`` to 2.6 GB and the billions-of-images header crashed it with a traceback.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from tests.badbatches import billions_of_images, forged_shape, good_bytes, run_measured, zip_bomb

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
# GX, pandas and NumPy imported, one 3,000-image batch validated: about 300 MiB on the 2-core dev machine.
ABSOLUTE_BOUND = 512 * MiB  # far below the 1.25 GB the bomb inflates to, or the 313 MB the forged header declares
HOSTILE_OVERHEAD_BOUND = 48 * MiB  # hostile files may cost at most this much over validating the good batch alone


def _run(args: list[str], env: dict[str, str]) -> tuple[int, str, int]:
    """Run ``mlcd ARGS`` as a child: ``(exit code, stdout, peak RSS bytes of that child)``."""
    code, out, err, peak, _ = run_measured([sys.executable, "-m", "mlcd.cli", *args], env)
    assert "Traceback" not in err, err
    return code, out, peak


@pytest.fixture(scope="module")
def files(tmp_path_factory, reference_data):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("hostile")
    payloads = {
        "good.npz": good_bytes(reference_data.x_train[:3000], reference_data.y_train[:3000]),
        "bomb.npz": zip_bomb(1_250_000_000),
        "billions.npz": billions_of_images(3_000_000_000),
        "forged.npz": forged_shape(400_000),
    }
    for name, payload in payloads.items():
        (folder / name).write_bytes(payload)
    return folder


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "MLCD_HOME": str(home), "PYTHONPATH": os.pathsep.join(sys.path)}


def test_mlcd_validate_refuses_hostile_files_within_a_memory_bound(files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = _env(tmp_path / "home")
    code, out, baseline = _run(["validate", "--json", str(files / "good.npz")], env)
    assert code == 0, out
    hostile = [files / n for n in ("bomb.npz", "billions.npz", "forged.npz", "good.npz")]
    t0 = time.perf_counter()
    code, out, peak = _run(["validate", "--json", *map(str, hostile)], env)
    elapsed = time.perf_counter() - t0
    results = {Path(r["file"]).name: r for r in map(json.loads, out.strip().splitlines())}
    assert code == 1
    assert results["good.npz"]["passed"] is True  # the good batch after the hostile ones is still judged
    assert "inflates to 1,249,999,536 bytes" in results["bomb.npz"]["reason"]
    assert "declares 3,000,000,000 images" in results["billions.npz"]["reason"]
    assert "truncated or forged" in results["forged.npz"]["reason"]
    print(f"peak RSS: good alone {baseline / MiB:.0f} MiB; hostile + good {peak / MiB:.0f} MiB; {elapsed:.1f} s")
    assert peak < ABSOLUTE_BOUND
    assert peak <= baseline + HOSTILE_OVERHEAD_BOUND
    assert {n: (files / n).stat().st_size for n in ("bomb.npz", "billions.npz")} == {
        "bomb.npz": len(zip_bomb(1_250_000_000)), "billions.npz": len(billions_of_images(3_000_000_000))}


def test_mlcd_intake_on_a_hostile_landing_zone_within_a_memory_bound(files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    landing = home / "landing"
    landing.mkdir(parents=True)
    for path in files.iterdir():
        (landing / path.name).write_bytes(path.read_bytes())
    code, out, peak = _run(["intake"], {**_env(home), "MLCD_SETTLE_S": "0"})
    assert code == 1, out
    lines = {line.split()[1]: line.split()[0] for line in out.strip().splitlines() if not line.startswith("snapshot")}
    assert lines == {"good.npz": "accepted", "bomb.npz": "quarantined", "billions.npz": "quarantined",
                     "forged.npz": "quarantined"}
    print(f"peak RSS of mlcd intake: {peak / MiB:.0f} MiB")
    assert peak < ABSOLUTE_BOUND
