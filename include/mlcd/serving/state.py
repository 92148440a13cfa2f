"""The gateway's persisted routes: written atomically so a crash never leaves half a file behind.

The gateway saves the routes *before* it switches to them, with their generation (the compare-and-set counter of
``/admin/routes``), so a restart serves exactly what was last acknowledged, at the same generation: a canary step
that read generation G before the restart can still move, and one that read an older G is still refused.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from mlcd.files import atomic_write_bytes


@dataclass(frozen=True)
class RouteState:
    """Which versions serve and how much traffic the canary gets (percent)."""

    stable: str | None = None
    canary: str | None = None
    canary_weight: int = 0
    updated_at: str = ""
    generation: int = 0
    holdback: str | None = None  # the previous champion kept as the bake's control
    holdback_weight: int = 0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def load_state(path: Path) -> RouteState | None:
    """The saved routes, or ``None`` when nothing was saved; a corrupt file is refused loudly."""
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
        return RouteState(
            stable=None if data.get("stable") is None else str(data["stable"]),
            canary=None if data.get("canary") is None else str(data["canary"]),
            canary_weight=int(data.get("canary_weight", 0)),
            updated_at=str(data.get("updated_at", "")),
            generation=int(data.get("generation", 0)),
            holdback=None if data.get("holdback") is None else str(data["holdback"]),
            holdback_weight=int(data.get("holdback_weight", 0)),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"gateway state file {path} is corrupt: {exc}") from exc


def save_state(path: Path, state: RouteState) -> RouteState:
    """Write ``state`` via a temporary file, fsync and ``os.replace`` (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stamped = RouteState(
        state.stable, state.canary, state.canary_weight, datetime.now(UTC).isoformat(), state.generation,
        state.holdback, state.holdback_weight,
    )
    atomic_write_bytes(path, json.dumps(stamped.to_dict(), indent=2, sort_keys=True).encode())
    return stamped
