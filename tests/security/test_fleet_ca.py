"""The fleet CA in RBEE_HOME/tls: made once and private, leaves that name what they must, kept while they fit and
issued again when their names change; a client that pins it trusts its leaves and nothing else."""

from __future__ import annotations

import asyncio
import socket
import ssl
import stat
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from cryptography import x509
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from rbee import daemon
from rbee.infra.tls import Authority
from tests.servers import free_port


def test_the_ca_and_keys_are_private_and_leaves_are_kept_while_they_fit(tmp_path: Path) -> None:
    authority = Authority(tmp_path / "tls")
    first = authority.leaf("hive-a", ("10.0.0.5", "127.0.0.1", "localhost"))
    assert stat.S_IMODE(authority.folder.stat().st_mode) == 0o700
    for key in ("ca.key", "hive-a.key"):
        assert stat.S_IMODE((authority.folder / key).stat().st_mode) == 0o600
    names = x509.load_pem_x509_certificate(first.cert.encode()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert {str(name.value) for name in names.value} == {"10.0.0.5", "127.0.0.1", "localhost"}
    assert authority.leaf("hive-a", ("10.0.0.5", "127.0.0.1", "localhost")).key == first.key, "kept"
    moved = authority.leaf("hive-a", ("10.0.0.9", "127.0.0.1", "localhost"))
    assert moved.key != first.key, "a hive at another address gets a new certificate"
    ca = authority.ca_pem()
    Authority(tmp_path / "tls").ensure()
    assert authority.ca_pem() == ca, "the CA is made once"


def _serve(cert: str, key: str) -> tuple[str, uvicorn.Server]:
    port = free_port()
    app = Starlette(routes=[Route("/health", lambda _: PlainTextResponse("ok"))])
    server = daemon.server(app, f"127.0.0.1:{port}", graceful=1, tls=(cert, key))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return f"https://127.0.0.1:{port}/health", server


def test_a_pinned_client_trusts_its_fleet_and_no_other(tmp_path: Path) -> None:
    ours, theirs = Authority(tmp_path / "ours"), Authority(tmp_path / "theirs")
    ours.leaf("hive-a", ("127.0.0.1",))
    theirs.leaf("hive-a", ("127.0.0.1",))
    pinned = ssl.create_default_context(cafile=str(ours.ca_file))
    good, server_a = _serve(str(ours.folder / "hive-a.pem"), str(ours.folder / "hive-a.key"))
    other, server_b = _serve(str(theirs.folder / "hive-a.pem"), str(theirs.folder / "hive-a.key"))
    try:
        assert httpx.get(good, verify=pinned).text == "ok"
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(other, verify=pinned)  # another fleet's CA: refused
        ours.leaf("hive-b", ("10.9.9.9",))
        wrong_name, server_c = _serve(str(ours.folder / "hive-b.pem"), str(ours.folder / "hive-b.key"))
        try:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                httpx.get(
                    wrong_name, verify=pinned
                )  # our CA, but a leaf for another host: one hive cannot pose as another
        finally:
            server_c.should_exit = True
    finally:
        server_a.should_exit = True
        server_b.should_exit = True


def test_a_running_server_takes_up_a_certificate_issued_again_for_new_names(tmp_path: Path) -> None:
    """A hive on another network joins a fleet whose queen already runs: the keeper issues the queen's leaf
    again with the new address, and the queen (any daemon that serves TLS, started by daemon.start) serves it
    from its next look at the file, without a restart; open connections go on."""
    authority = Authority(tmp_path / "tls")
    authority.leaf("queen", ("127.0.0.1", "localhost"))
    files = (str(authority.folder / "queen.pem"), str(authority.folder / "queen.key"))
    port = free_port()
    app = Starlette(routes=[Route("/health", lambda _: PlainTextResponse("ok"))])
    server = daemon.server(app, f"127.0.0.1:{port}", graceful=1, tls=files)
    pinned = ssl.create_default_context(cafile=str(authority.ca_file))

    def served_names() -> set[str]:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            pinned.wrap_socket(raw, server_hostname="127.0.0.1") as wrapped,
        ):
            der = wrapped.getpeercert(binary_form=True)
        assert der is not None
        names = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return {str(name.value) for name in names.value}

    def client_side() -> None:
        assert served_names() == {"127.0.0.1", "localhost"}
        with httpx.Client(verify=pinned) as kept_open:
            assert kept_open.get(f"https://127.0.0.1:{port}/health").text == "ok"
            authority.leaf("queen", ("10.77.0.1", "127.0.0.1", "localhost"))
            deadline = time.monotonic() + 5
            while served_names() != {"10.77.0.1", "127.0.0.1", "localhost"}:
                assert time.monotonic() < deadline, "the server still serves the old certificate"
                time.sleep(0.05)
            assert kept_open.get(f"https://127.0.0.1:{port}/health").text == "ok", "an open connection goes on"

    async def main() -> None:
        serving = await daemon.start(server)
        try:
            await asyncio.to_thread(client_side)
        finally:
            server.should_exit = True
            await serving

    asyncio.run(main())
