"""A real PostgreSQL server for the tests that need one (a queen's store shared by several queens): Debian's
`postgresql` package's binaries, a cluster made by `initdb` in a temporary folder, run by an unprivileged user
(the server refuses root: `runuser` to the package's `postgres` user), listening on 127.0.0.1 only, trusting
loopback connections (a test cluster that lives minutes). Skipped, with the reason, where none is installed."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.servers import free_port

USER = "rbee"


def binaries() -> Path | None:
    """The newest installed PostgreSQL's bin folder."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda path: int(path.parent.parent.name))
    return found[-1].parent if found else None


def missing() -> str | None:
    """Why a server cannot be started here, or None."""
    if binaries() is None:
        return "PostgreSQL is not installed (apt-get install postgresql; .ci/run does)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "no postgres user to run the server as (Debian's postgresql package makes one)"
    return None


@dataclass
class PostgresServer:
    folder: Path
    port: int
    bin: Path

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"

    def database(self, name: str) -> str:
        """The URL of a fresh database `name` on this server."""
        self.psql(f'CREATE DATABASE "{name}"')
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{name}"

    def psql(self, statement: str) -> None:
        subprocess.run(
            [
                str(self.bin / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                USER,
                "-d",
                "postgres",
                "-c",
                statement,
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextlib.contextmanager
def running() -> Iterator[PostgresServer]:
    bin_dir = binaries()
    assert bin_dir is not None, missing()
    folder = Path(tempfile.mkdtemp(prefix="rbee-postgres-"))
    folder.chmod(0o755)
    data, sockets = folder / "data", folder / "sockets"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        shutil.chown(sockets, "postgres")
    server = PostgresServer(folder, free_port(), bin_dir)
    initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync"]
    subprocess.run(_as_server_user(initdb), check=True, capture_output=True, timeout=120)
    options = f"-p {server.port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"
    start = [
        str(bin_dir / "pg_ctl"),
        "-D",
        str(data),
        "-o",
        options,
        "-l",
        str(folder / "server.log"),
        "-w",
        "-t",
        "60",
        "start",
    ]
    subprocess.run(_as_server_user(start), check=True, capture_output=True, timeout=90)
    try:
        yield server
    finally:
        stop = [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "-t", "30", "stop"]
        subprocess.run(_as_server_user(stop), check=False, capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
