"""A throwaway PostgreSQL server for the prediction log's tests: initdb + pg_ctl in a temporary
folder on a free loopback port, one per test session (per xdist worker), a fresh database per
test. The binaries come from the machine (`make postgres` installs Debian's); without them, or
without psycopg, the PostgreSQL tests skip and say why. PostgreSQL refuses to run as root, so
as root the server runs as the `postgres` (or `nobody`) user."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

BINARIES = ("initdb", "pg_ctl", "postgres")
START_TIMEOUT_S = 60


def find_pg_bin() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres: $CLARIVIS_PG_BIN, pg_ctl on PATH,
    `pg_config --bindir`, then Debian's /usr/lib/postgresql/<version>/bin (newest first)."""
    candidates = [os.environ.get("CLARIVIS_PG_BIN", "")]
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent))
    if shutil.which("pg_config"):
        try:
            candidates.append(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                                             timeout=10).stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                    key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    candidates += reversed(debian)
    for folder in candidates:
        if folder and all((Path(folder) / name).is_file() for name in BINARIES):
            return Path(folder)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One server: `url(database)`, `stop()` and `start()` (for outage tests), `new_database()`."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.user = None
        if os.geteuid() == 0:  # postgres will not run as root
            for name in ("postgres", "nobody"):
                try:
                    self.user = pwd.getpwnam(name)
                    break
                except KeyError:
                    continue
            if self.user is None:
                pytest.skip("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")
        self.base = Path(tempfile.mkdtemp(prefix="clarivis-pg-"))  # under /tmp: that user can reach it
        if self.user:
            os.chown(self.base, self.user.pw_uid, self.user.pw_gid)
        self.data = self.base / "data"
        self.port = _free_port()
        self._run("initdb", "-D", str(self.data), "-U", "clarivis", "--auth=trust", "-E", "UTF8",
                  "--no-instructions")
        self.start()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://clarivis@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.base / "server.log"), "-o", options,
                  "-w", "-t", str(START_TIMEOUT_S), "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=clarivis dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.base, ignore_errors=True)

    def _run(self, binary: str, *args: str) -> None:
        kwargs = {}
        if self.user:
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        result = subprocess.run([str(self.bindir / binary), *args], capture_output=True, text=True,
                                cwd=self.base, timeout=START_TIMEOUT_S + 30, **kwargs)
        if result.returncode != 0:
            log = self.base / "server.log"
            tail = log.read_text()[-2000:] if log.is_file() else ""
            raise subprocess.CalledProcessError(result.returncode, binary, result.stdout,
                                                result.stderr + tail)


@pytest.fixture(scope="session")
def postgres_server():
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install 'psycopg[binary]'")
    bindir = find_pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: `make postgres` "
                    "installs them (Debian: apt-get install postgresql), or set CLARIVIS_PG_BIN")
    server = PostgresServer(bindir)
    yield server
    server.close()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh database on the session's server."""
    return postgres_server.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """Each test that takes it runs on a SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{(tmp_path / 'log' / 'predictions.db').as_posix()}"
    return request.getfixturevalue("postgres_url")
