"""A throwaway PostgreSQL server for tests: its own cluster in a temporary folder, on a free 127.0.0.1 port.

Uses Debian's ``postgresql`` binaries (``/usr/lib/postgresql/<major>/bin`` or ``$PATH``). ``initdb`` refuses to
run as root, so when the tests run as root the cluster is created and run as the ``postgres`` user (else
``nobody``) through ``runuser``; the data folder is handed to that user. Authentication is ``trust`` and the
server listens on 127.0.0.1 only; ``fsync`` is off (a test server need not survive a power cut).

    with PostgresServer() as pg:
        url = pg.url()                        # postgresql+psycopg2://mlcd@127.0.0.1:<port>/mlcd
        other = pg.create_database("mlflow")  # another database on the same server

``stop()`` (or leaving the ``with``) stops the server (``pg_ctl stop -m fast``) and deletes the folder.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

SUPERUSER = "mlcd"


def postgres_bin_dir() -> Path:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``; a clear error when PostgreSQL is missing."""
    found = shutil.which("initdb") or shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if candidates:
        return Path(candidates[-1]).parent
    raise RuntimeError(
        "PostgreSQL server binaries not found (no initdb on PATH or in /usr/lib/postgresql/*/bin): "
        "install Debian's `postgresql` package (apt-get install postgresql)"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as_user() -> str | None:
    """The unprivileged user to run PostgreSQL as when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a `postgres` nor a `nobody` user exists to run PostgreSQL as")


class PostgresServer:
    """One PostgreSQL cluster for the duration of a test module or session (see the module docstring)."""

    def __init__(self, root: Path | None = None, *, max_connections: int = 200) -> None:
        self.bin = postgres_bin_dir()
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="mlcd-pg-"))
        self._owns_root = root is None
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.sockets = self.root / "sock"
        self.user = _run_as_user()
        self.max_connections = max_connections
        self.host = "127.0.0.1"
        self.port = 0
        self.started = False

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", self.user, "--", *args] if self.user else list(args)

    def _check(self, *args: str, timeout: float = 120) -> None:
        out = subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=timeout, check=False)
        if out.returncode != 0:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({out.returncode}): {out.stderr.strip()}\n{tail}")

    def start(self, timeout_s: float = 60) -> PostgresServer:
        self.sockets.mkdir(parents=True, exist_ok=True)
        if self.user:
            info = pwd.getpwnam(self.user)
            for path in (self.root, self.sockets):
                os.chown(path, info.pw_uid, info.pw_gid)
        self._check(str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
                    "-E", "UTF8", "--locale=C", "--no-sync")
        for attempt in range(3):
            self.port = _free_port()
            opts = (f"-c listen_addresses={self.host} -c port={self.port} -c unix_socket_directories={self.sockets} "
                    f"-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                    f"-c max_connections={self.max_connections}")
            try:
                self._check(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", opts,
                            "-w", "-t", str(int(timeout_s)), "start", timeout=timeout_s + 10)
                break
            except RuntimeError:
                if attempt == 2:  # the free port may have been taken between choosing and binding it
                    raise
        self.started = True
        self._wait_ready(timeout_s)
        self.create_database(SUPERUSER)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        import psycopg2

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                psycopg2.connect(host=self.host, port=self.port, user=SUPERUSER, dbname="postgres").close()
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def create_database(self, name: str) -> str:
        """Create database ``name`` (if missing) and return its SQLAlchemy URL."""
        import psycopg2
        from psycopg2 import sql as pgsql

        conn = psycopg2.connect(host=self.host, port=self.port, user=SUPERUSER, dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
        finally:
            conn.close()
        return self.url(name)

    def url(self, database: str = SUPERUSER, driver: str = "psycopg2") -> str:
        """The SQLAlchemy URL of ``database`` (``driver=""`` gives a plain ``postgresql://`` URL)."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def stop(self) -> None:
        if self.started:
            subprocess.run(self._cmd(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"),
                           capture_output=True, timeout=60, check=False)
            self.started = False
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


__all__ = ["SUPERUSER", "PostgresServer", "postgres_bin_dir"]
