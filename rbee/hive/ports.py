"""Worker ports: the hive binds a worker's port itself and passes the socket down (`--listen-fd`). Probing a
port and letting the worker bind it a second later lost it to another hive on the same machine."""

from __future__ import annotations

import socket

FIRST_WORKER_PORT = 8001
PORTS = 1000


class NoFreePort(Exception):
    pass


def reserve(host: str, taken: set[int]) -> socket.socket:
    """A socket bound to the first free port on `host` from FIRST_WORKER_PORT (not listening yet: the worker
    that inherits it listens)."""
    for port in range(FIRST_WORKER_PORT, FIRST_WORKER_PORT + PORTS):
        if port in taken:
            continue
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            continue
        return sock
    raise NoFreePort(f"no free port from {FIRST_WORKER_PORT} to {FIRST_WORKER_PORT + PORTS - 1} on this hive")
