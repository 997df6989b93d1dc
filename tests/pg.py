"""A real PostgreSQL cluster for the tests: initdb in a temporary directory, a Unix socket there, stopped at the end.

PostgreSQL refuses to run as root, and CI runs as root: then the cluster runs
as TEST_USER (made by scripts/setup and .ci/run when missing), through
`runuser`. No TCP: the socket lives in the cluster's own directory.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

TEST_USER = "carledger-test"
DB_USER = "carledger"  # the cluster's superuser, reached over the socket with trust auth


def pg_bin() -> Path | None:
    """The newest Debian PostgreSQL's bin directory, None when none is installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parent.parent.name))
    return Path(found[-1]).parent if found else None


def require_postgresql() -> Path:
    """The bin directory; skips when PostgreSQL (or psycopg) is missing (scripts/setup installs both)."""
    bindir = pg_bin()
    problem = None
    if bindir is None:
        problem = "PostgreSQL is not installed (scripts/setup installs Debian's postgresql)"
    else:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            problem = "psycopg is not installed (pip install -e '.[fleet]', scripts/setup)"
    if problem:
        pytest.skip(problem)
    if os.getuid() == 0:
        try:
            pwd.getpwnam(TEST_USER)
        except KeyError:
            pytest.fail(f"running as root needs the user {TEST_USER} to run PostgreSQL (scripts/setup makes it)")
    return bindir


class PgCluster:
    """One cluster in its own directory; `dsn(db)` names a database on its socket."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="carledger-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.as_user: list[str] = []
        if os.getuid() == 0:
            user = pwd.getpwnam(TEST_USER)
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self.as_user = ["runuser", "-u", TEST_USER, "--"]
        self._run("initdb", "-D", str(self.data), "-U", DB_USER, "--auth=trust", "-E", "UTF8", "--no-sync")
        self.started = False
        self.databases = 0

    def _run(self, tool: str, *args: str) -> None:
        result = subprocess.run([*self.as_user, str(self.bindir / tool), *args], capture_output=True, text=True,
                                cwd=self.root, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stderr or result.stdout}\n"
                               f"{self.log.read_text() if self.log.exists() else ''}")

    def start(self) -> "PgCluster":
        opts = f"-k {self.root} -c listen_addresses='' -c fsync=off -c max_connections=100"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "-t", "60", "start")
        self.started = True
        return self

    def stop(self, mode: str = "fast") -> None:
        if self.started:
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
            self.started = False

    def restart(self) -> None:
        self.stop()
        self.start()

    def dsn(self, db: str = "postgres") -> str:
        return f"host={self.root} dbname={db} user={DB_USER}"

    def new_database(self) -> str:
        """A fresh empty database (one per test): its DSN."""
        import psycopg

        self.databases += 1
        name = f"t{self.databases}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def close(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster():
    cluster = PgCluster(require_postgresql()).start()
    yield cluster
    cluster.close()


@pytest.fixture
def pg_dsn(pg_cluster) -> str:
    """A DSN of a fresh database on the session's cluster."""
    return pg_cluster.new_database()
