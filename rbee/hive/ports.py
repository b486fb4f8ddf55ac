"""Worker ports: the hive binds a worker's port itself and passes the socket down (`--listen-fd`). Probing a
port and letting the worker bind it a second later lost it to another hive on the same machine.

On Linux the hive also keeps a guard on each worker's port: a second socket bound to it (SO_REUSEPORT, which
the kernel shares only between sockets of one user) that never listens. While the worker lives, connections
reach the worker; once it is gone they are refused at once, as before, but no other local user can bind the
port, so a request the queen sends to a port it still remembers reaches no impostor. The guard stays for
GUARD_GRACE after the worker leaves, longer than the queen takes to forget it. Since SO_REUSEPORT would let
another hive of the same user share the port too, each hive first takes the port's name in the abstract socket
namespace (`rbee-worker-port-HOST-PORT`), which one socket at a time can hold, on one machine.
"""

from __future__ import annotations

import socket
import sys
import time
from dataclasses import dataclass

FIRST_WORKER_PORT = 8001
PORTS = 1000
GUARD_GRACE = 30.0
"""Seconds a port stays guarded after its worker left (the queen forgets a worker within a few seconds)."""
GUARDED = sys.platform.startswith("linux")
"""Elsewhere SO_REUSEPORT does not keep other users out, so there is no guard (and no sharing)."""


class NoFreePort(Exception):
    pass


@dataclass
class Reservation:
    listener: socket.socket
    """Bound, not listening yet: the worker that inherits it listens."""
    guard: tuple[socket.socket, ...] = ()
    """The guard and the port's name; empty where there is no guard."""


def _socket(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    if GUARDED:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


def _bound(sock: socket.socket, address: tuple[str, int] | str) -> bool:
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        return False
    return True


def reserve(host: str, taken: set[int]) -> Reservation:
    """The first free port on `host` from FIRST_WORKER_PORT, bound for the worker, with its guard."""
    for port in range(FIRST_WORKER_PORT, FIRST_WORKER_PORT + PORTS):
        if port in taken:
            continue
        if not GUARDED:
            listener = _socket(host)
            if _bound(listener, (host, port)):
                return Reservation(listener)
            continue
        name = socket.socket(socket.AF_UNIX)
        if not _bound(name, f"\0rbee-worker-port-{host}-{port}"):
            continue  # another hive on this machine has it
        listener, guard = _socket(host), _socket(host)
        if not _bound(listener, (host, port)):
            name.close()
            continue
        if not _bound(guard, (host, port)):
            listener.close()
            name.close()
            continue
        return Reservation(listener, (guard, name))
    raise NoFreePort(f"no free port from {FIRST_WORKER_PORT} to {FIRST_WORKER_PORT + PORTS - 1} on this hive")


class Guards:
    """The hive's guards, by port: kept while a worker has the port, then for GUARD_GRACE."""

    def __init__(self) -> None:
        self._held: dict[int, tuple[tuple[socket.socket, ...], float | None]] = {}

    def hold(self, port: int, guard: tuple[socket.socket, ...]) -> None:
        if guard:
            self._held[port] = (guard, None)

    def ports(self) -> set[int]:
        return set(self._held)

    def sweep(self, in_use: set[int], now: float | None = None) -> None:
        """Start the grace of ports no worker has any more; close the guards whose grace is over."""
        now = time.monotonic() if now is None else now
        for port, (guard, left) in list(self._held.items()):
            if port in in_use:
                self._held[port] = (guard, None)
            elif left is None:
                self._held[port] = (guard, now)
            elif now - left >= GUARD_GRACE:
                _close(guard)
                del self._held[port]

    def close_all(self) -> None:
        for guard, _ in self._held.values():
            _close(guard)
        self._held.clear()


def _close(sockets: tuple[socket.socket, ...]) -> None:
    for sock in sockets:
        sock.close()
