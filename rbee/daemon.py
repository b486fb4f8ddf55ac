"""What every rbee daemon (queen, hive, worker) does the same way: run its event loop, serve its Starlette app
with uvicorn, stop on SIGTERM, guard its API with a bearer credential, name the first thing wrong with a body,
and die with its parent."""

from __future__ import annotations

import asyncio
import ctypes
import hmac
import logging
import os
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pydantic
import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rbee.api import wire

T = TypeVar("T")
Handler = Callable[[Request], Awaitable[Response]]
log = logging.getLogger("rbee.daemon")
PR_SET_PDEATHSIG = 1


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a daemon's event loop: uvloop where it is installed (it comes with uvicorn[standard]), else asyncio.
    uvloop cut the relay's CPU per token by a quarter to a third on this kind of machine (FACTS.md)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def configure_logging(line_format: str) -> None:
    logging.basicConfig(level=logging.INFO, format=line_format)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def server(app: Any, listen: str, graceful: int, tls: tuple[str, str] | None = None) -> uvicorn.Server:
    """A uvicorn server for `app` on `listen` (host:port): no access log, no lifespan and no proxy headers, as
    every daemon wants; `graceful` bounds how long open connections may take to finish at shutdown. With `tls`
    (certificate and key files) it speaks only TLS 1.2 or newer."""
    host, _, port = listen.rpartition(":")
    certificate, key = tls if tls else (None, None)
    return uvicorn.Server(
        uvicorn.Config(
            app,
            host=host.strip("[]"),
            port=int(port),
            log_level="warning",
            access_log=False,
            lifespan="off",
            # No daemon sits behind a proxy or reads a client's address: X-Forwarded-* from loopback is not to be
            # believed, and parsing it cost every request. No "server: uvicorn" either: nobody's business.
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=graceful,
            ssl_certfile=certificate,
            ssl_keyfile=key,
            ssl_version=ssl.PROTOCOL_TLS_SERVER,
        )
    )


async def start(
    served: uvicorn.Server, on_signal: Callable[[], None] | None = None, sock: socket.socket | None = None
) -> asyncio.Task[None]:
    """Start serving (on `sock` when one was bound for it); returns (the task that serves) once the server
    listens or failed to. SIGTERM and SIGINT then call `on_signal`, by default: stop serving. A server with TLS
    follows its certificate file (follow_certificate)."""
    serving = asyncio.create_task(served.serve(sockets=[sock] if sock else None), name="serve")
    while not served.started and not serving.done():
        await asyncio.sleep(0.01)
    certificate, key = served.config.ssl_certfile, served.config.ssl_keyfile
    if certificate and key and not serving.done():
        follower = asyncio.create_task(follow_certificate(served, (str(certificate), str(key))), name="certificate")
        serving.add_done_callback(lambda _: follower.cancel())
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal or (lambda: setattr(served, "should_exit", True)))
    return serving


async def follow_certificate(served: uvicorn.Server, tls: tuple[str, str], interval: float = 1.0) -> None:
    """Serve the certificate on disk: when the keeper issues a new one (a hive on another network joined the
    fleet, or the old one neared its end), load it into the running server, so new connections get it and open
    ones go on. A pair that cannot be loaded (caught half-written) is tried again at the next look."""
    certificate, key = tls

    def stamp() -> tuple[int, int]:
        try:
            return os.stat(certificate).st_mtime_ns, os.stat(key).st_mtime_ns
        except OSError:
            return (0, 0)

    seen = stamp()
    while True:
        await asyncio.sleep(interval)
        now = stamp()
        context = served.config.ssl
        if now == seen or context is None:
            continue
        try:
            context.load_cert_chain(certificate, key)
        except (OSError, ssl.SSLError) as error:
            log.warning("could not load the new certificate %s yet: %s", certificate, error)
            continue
        seen = now
        log.info("serving the new certificate %s", certificate)


def token_guard(token: str | None) -> Callable[[Handler], Handler]:
    """Wrap a handler so that it answers only requests that carry `token` (compared in constant time); None
    guards nothing."""
    expected = f"Bearer {token}".encode()

    def wrap(handler: Handler) -> Handler:
        async def check(request: Request) -> Response:
            if token is not None and not hmac.compare_digest(
                request.headers.get("authorization", "").encode(), expected
            ):
                return JSONResponse(wire.error_body("missing or wrong credential", "unauthorized"), 401)
            return await handler(request)

        return check

    return wrap


def first_error(failure: pydantic.ValidationError) -> str:
    """The first thing wrong with a body, named by its field: `replicas: Input should be ...`."""
    item = failure.errors()[0]
    where = ".".join(str(part) for part in item["loc"])
    message = str(item["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def parent_death_signal() -> None:
    """Ask the kernel to SIGTERM this process when the thread that forked it ends (Linux; a no-op elsewhere).
    Used as a child's preexec_fn, and by a worker for itself."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def die_with_parent(parent_pid: int | None) -> None:
    """Exit when the process that started us exits, even if it is killed outright: the parent-death signal,
    and a watchdog on the parent's pid where that signal does not exist."""
    if parent_pid is None:
        return
    parent_death_signal()
    if os.getppid() != parent_pid:
        os._exit(3)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(3)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def route_source(target: str) -> str | None:
    """This machine's address on the route to `target` (a UDP connect sends nothing)."""
    try:
        family, _, _, _, address = socket.getaddrinfo(target, 9, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(address)
            return str(probe.getsockname()[0])
    except OSError:
        return None
