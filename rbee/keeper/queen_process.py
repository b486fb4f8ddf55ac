"""The queen as a process on the operator's machine: started by `rbee apply` (detached, logging to
RBEE_HOME/queen/queen.log), found again through RBEE_HOME, and stopped by `rbee destroy`."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from rbee import daemon
from rbee.clients.queen import QueenClient
from rbee.keeper.home import Home
from rbee.spec.schema import HiveFile, queen_tls

START_TIMEOUT = 20.0


class QueenError(Exception):
    """The queen could not be started or reached; the message says what to check."""


def url_for(spec: HiveFile) -> str:
    host, _, port = spec.queen.listen.rpartition(":")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"{'https' if queen_tls(spec.queen) else 'http'}://{host}:{port}"


def queen_names(spec: HiveFile) -> tuple[str, ...]:
    """What the queen's certificate must answer to: its listen address, or (listening on every address) this
    machine's address on the route to each hive, where hives send their heartbeats; and loopback, for the keeper."""
    host = spec.queen.listen.rpartition(":")[0].strip("[]")
    if host not in ("0.0.0.0", "::", ""):
        return (host, "127.0.0.1", "localhost")
    sources = [daemon.route_source(hive.api_host) for hive in spec.hives]
    return (*(source for source in sources if source), socket.gethostname(), "127.0.0.1", "localhost")


def ensure_running(spec: HiveFile, home: Home, operator: str) -> tuple[QueenClient, bool]:
    """A client of the fleet's queen (as the operator), and whether the queen had to be started."""
    queen = QueenClient(url_for(spec), operator)
    home.ensure()
    tls_arguments: list[str] = []
    if queen_tls(spec.queen):  # hives' heartbeats cross a network to it: it serves TLS, as they do
        # Issued (again, when hive.yaml now reaches a hive on another network) before the queen is found
        # running: a running queen follows its certificate file (daemon.follow_certificate).
        authority = home.authority
        authority.leaf("queen", queen_names(spec))
        tls_arguments = [
            "--tls-cert",
            str(authority.folder / "queen.pem"),
            "--tls-key",
            str(authority.folder / "queen.key"),
        ]
    if queen.is_running():
        return queen, False
    if queen.answers():
        raise QueenError(
            f"another queen answers at {queen.url} and refuses this RBEE_HOME's credential; "
            "stop it or change queen.listen"
        )
    home.queen_dir.mkdir(mode=0o700, exist_ok=True)
    log_path = home.queen_dir / "queen.log"
    descriptor = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(descriptor, "ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rbee",
                "queen",
                "serve",
                "--home",
                str(home.root),
                "--listen",
                spec.queen.listen,
                *tls_arguments,
                *(["--store", spec.queen.store] if spec.queen.store else []),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while not queen.is_running():
        if process.poll() is not None:
            raise QueenError(f"the queen exited at start (code {process.returncode}); see {log_path}")
        if time.monotonic() > deadline:
            process.kill()
            raise QueenError(f"the queen did not answer on {queen.url} within {START_TIMEOUT:.0f} s; see {log_path}")
        time.sleep(0.05)
    home.remember_queen(queen.url, process.pid)
    return queen, True


def running(home: Home) -> QueenClient | None:
    """A client of the queen this RBEE_HOME started, if it recorded one."""
    record = home.queen()
    if record is None:
        return None
    credentials = home.credentials(create=False)
    return QueenClient(str(record["url"]), credentials.operator if credentials else None)


def reachable(home: Home) -> QueenClient | None:
    """The queen this RBEE_HOME started, or, when it does not answer, the first of its peers that does (the other
    queens on the same store, hive.yaml's queen.peers as last applied): any of them answers for the fleet."""
    local = running(home)
    if local is not None and local.answers():
        return local
    spec, _ = home.applied()
    credentials = home.credentials(create=False)
    for peer in spec.queen.peers if spec is not None else ():
        client = QueenClient(peer, credentials.operator if credentials else None)
        if client.is_running():
            return client
    return local


def stop(home: Home) -> bool:
    """Stop the queen this keeper started; True if one was running."""
    record = home.queen()
    if record is None:
        return False
    pid = int(str(record.get("pid", 0)))
    queen = running(home)
    if queen is not None:
        queen.shutdown()
    # A pid in queen.json may have been reused by another program since: signal it only while it is this queen.
    if is_our_queen(pid, home) and not _wait_gone(pid, 10.0) and is_our_queen(pid, home):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 5.0)
    home.forget_queen()
    return True


def is_our_queen(pid: int, home: Home) -> bool:
    """Whether `pid` is `rbee queen serve` for this RBEE_HOME (its command line, read from /proc)."""
    if pid <= 0:  # pid 0 would name our own process group
        return False
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    command = [word.decode(errors="replace") for word in words]
    return "queen" in command and "serve" in command and str(home.root) in command


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    return False
