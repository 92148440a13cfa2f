"""Durable file operations and safe file names.

Atomic writes: a reader sees the old file or the new one, never half of one, and after a crash (power loss, a
killed process) what was published is on disk: data and directory entries are fsynced before a rename is
relied on. Safe names: a landed file's name is chosen by someone else and may hold bytes that are not UTF-8, or
control characters; :func:`printable_name` turns it into one printable line that SQLite, JSON and a log accept.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

# Staging entries older than this are litter from a crash on another host (their pid cannot be checked).
STALE_STAGING_S = 24 * 3600


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename or a new file in it) to disk; a no-op where directories can't be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename is still atomic
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush one file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsync, ``os.replace``, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def publish_file(staged: Path, target: Path) -> Path:
    """Move an already fsynced file into place atomically and make the rename durable.

    Across filesystems (``EXDEV``) the bytes are copied to a temporary file next to ``target`` first, so the
    target still appears whole or not at all.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(staged, target)
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}-", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out, open(staged, "rb") as src:
                shutil.copyfileobj(src, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        staged.unlink(missing_ok=True)
    fsync_dir(target.parent)
    return target


def staging_tag() -> str:
    """``<host>.<pid>``: names a staging entry so that a later run can tell whether its writer is gone."""
    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())[:64] or "host"
    return f"{host}.{os.getpid()}"


def clean_stale_staging(folder: Path, marker: str = ".staging") -> list[Path]:
    """Remove staging entries under ``folder`` left by a writer that crashed.

    An entry's name ends with ``.<host>.<pid><marker>`` (see :func:`staging_tag`): on this host it is stale when
    that process is gone; from another host, when it is older than :data:`STALE_STAGING_S`. Returns what was
    removed. A live writer's entry is never touched, so a concurrent run is not broken.
    """
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    here = staging_tag().rsplit(".", 1)[0]
    for entry in folder.iterdir():
        if not entry.name.endswith(marker):
            continue
        parts = entry.name[: -len(marker)].rsplit(".", 2)
        stale = False
        if len(parts) == 3 and parts[1] == here and parts[2].isdigit():
            stale = not _alive(int(parts[2]))
        else:
            try:
                stale = time.time() - entry.stat().st_mtime > STALE_STAGING_S
            except OSError:
                continue
        if stale:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def printable_name(name: str) -> str:
    """``name`` as one printable line: undecodable bytes as ``\\xNN``, control characters escaped.

    File names on POSIX are bytes; Python hands undecodable ones over as lone surrogates (``surrogateescape``),
    which SQLite and UTF-8 JSON refuse. Those become ``\\xNN``; a newline or other control character becomes its
    escape so that a name can never break a one-line reason or a log line.
    """
    text = name
    if _has_surrogates(name):
        try:
            text = os.fsencode(name).decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a surrogate that surrogateescape never produces
            text = name.encode("utf-8", "backslashreplace").decode("utf-8")
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
