"""The benchmark's own PostgreSQL server: `initdb` into a temporary folder, started on a free port
with `pg_stat_statements` preloaded, stopped and removed after the run.

Why a server of its own rather than the shared one: PostgreSQL counts the statements of each
database only with `pg_stat_statements`, which must be preloaded (a restart of the shared server,
which is not ours to restart); `log_statement` would write every statement of the run to the
shared server's log and cost it the writing. A server of our own also makes its CPU ours alone:
the shared server's backends serve other people's tests meanwhile. It runs the same binaries with
initdb's defaults (shared_buffers 128MB, max_connections 100, fsync and synchronous_commit on, as
the shared server has them), its data on the same disk. Starting it takes about two seconds.

Where PostgreSQL's binaries are not installed (`pg_config --bindir`), the run uses the shared
server and says that statements were not counted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from harness.system import free_port
from harness.wait import eventually_sync


@dataclass(frozen=True)
class OwnPostgres:
    admin_url: str  # SQLAlchemy form, as harness.servers.Servers takes it
    pid: int  # the postmaster


def bindir() -> Path | None:
    """Where initdb and pg_ctl are, if PostgreSQL's server binaries are installed."""
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
    path = Path(found.stdout.strip())
    return path if (path / "initdb").exists() and (path / "pg_ctl").exists() else None


def _as_owner(command: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: as root, run them as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextlib.contextmanager
def own_postgres(binaries: Path) -> Iterator[OwnPostgres]:
    data = Path(tempfile.mkdtemp(prefix="saga-bench-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    port = free_port()
    options = " ".join(
        [
            f"-p {port}",
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={data}",
            "-c shared_preload_libraries=pg_stat_statements",
            "-c pg_stat_statements.track_utility=on",  # BEGIN and COMMIT are statements too
            "-c pg_stat_statements.max=10000",
        ]
    )
    initdb, pg_ctl = str(binaries / "initdb"), str(binaries / "pg_ctl")
    log = str(data / "server.log")
    try:
        for command in (
            [initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
            [pg_ctl, "-D", str(data), "-l", log, "-w", "-o", options, "start"],
        ):
            subprocess.run(_as_owner(command), check=True, capture_output=True)
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        eventually_sync(lambda: _answers(url), timeout=30, interval=0.1)
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        pid = int((data / "postmaster.pid").read_text().split()[0])
        yield OwnPostgres(f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", pid)
    finally:
        subprocess.run(
            _as_owner([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"]),
            check=False,
            capture_output=True,
        )
        shutil.rmtree(data, ignore_errors=True)


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False
