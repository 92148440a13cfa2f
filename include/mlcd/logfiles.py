"""Bounded log files for the platform's long-running processes.

Each service writes its stdout and stderr to ``MLCD_HOME/logs/<service>.log``; a process owns that file for its
whole life, so the file is rotated when the service (re)starts: above ``max_bytes`` it becomes ``.1`` (the older
ones shift up to ``.<keep>``, the oldest is dropped), and disk use per service stays bounded by about
``(keep + 1) × max_bytes`` plus what one run writes.
"""

from __future__ import annotations

import os
from pathlib import Path

MAX_BYTES = 10 * 1024 * 1024
KEEP = 3


def rotate(path: Path, max_bytes: int = MAX_BYTES, keep: int = KEEP) -> bool:
    """Shift ``path`` to ``path.1`` (and so on) when it is larger than ``max_bytes``; returns whether it did."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    for i in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{i + 1}"))
    os.replace(path, path.with_name(f"{path.name}.1"))
    return True
