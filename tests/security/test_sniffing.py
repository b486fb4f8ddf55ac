"""What a sniffer on the LAN sees of a running fleet: the test hosts' bridge is read with a raw packet socket while
rbee applies two SSH hives, the queen (listening on every address, so hives beat to it over the bridge) serves
completions through their workers, and `rbee status` runs. No credential of any role and no bearer header may
cross the wire in clear text; the prompt and the answer may not either."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import hosts as test_hosts
from tests.e2e.test_ssh_hives import spec_text
from tests.fleet import Fleet, make_fleet

pytestmark = pytest.mark.slow
ETH_P_ALL = 0x0003
PROMPT = "The secret word is periwinkle-42; repeat it:"


class Sniffer:
    """Every frame on one interface, kept in memory (the test's traffic is a few MB)."""

    def __init__(self, interface: str) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind((interface, 0))
        self.sock.settimeout(0.2)
        self.frames: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                self.frames.append(self.sock.recv(65535))
            except TimeoutError:
                continue

    def stop(self) -> bytes:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()
        return b"".join(self.frames)


@pytest.fixture(scope="module")
def machines() -> Iterator[test_hosts.Hosts]:
    with test_hosts.running(2) as made:
        yield made


def test_nothing_secret_crosses_the_lan_in_clear(machines: test_hosts.Hosts, smollm2: Path, tmp_path: Path) -> None:
    fleet: Fleet = make_fleet(tmp_path, f"file://{smollm2}")
    port = int(fleet.queen_url.rsplit(":", 1)[1])
    text = spec_text(machines, smollm2, {"node1": 1, "node2": 1}, queen_port=port).replace(
        f"queen: {{listen: '127.0.0.1:{port}'}}", f"queen: {{listen: '0.0.0.0:{port}', heartbeat_interval: 1s}}"
    )
    fleet.spec.write_text(text)
    sniffer = Sniffer(test_hosts.BRIDGE)
    try:
        applied = fleet.rbee("apply", str(fleet.spec), "--yes")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        queen = f"https://127.0.0.1:{port}"
        answers = []
        for _ in range(4):  # least-loaded routing spreads them over both hives' workers
            reply = httpx.post(
                f"{queen}/v1/completions",
                json={"model": "smollm2", "prompt": PROMPT, "max_tokens": 8, "temperature": 0},
                headers=fleet.keyed,
                timeout=60,
                verify=fleet.tls,
            )
            assert reply.status_code == 200, reply.text
            answers.append(reply.json()["choices"][0]["text"])
        assert fleet.rbee("status").returncode == 0
        status = httpx.get(f"{queen}/v2/status", headers=fleet.operator, timeout=10, verify=fleet.tls).json()
        beating = sorted(status["heartbeats"])
    finally:
        captured = sniffer.stop()
        fleet.rbee("destroy", str(fleet.spec), "--yes")
    assert b"SSH-2.0-" in captured, "the sniffer sees the bridge (the SSH banners are clear text)"
    assert len(captured) > 50_000, f"only {len(captured)} bytes captured"
    credentials = fleet.credentials()
    secrets = {
        "bearer header": b"Bearer ",
        "operator credential": credentials.operator.encode(),
        "fleet key": credentials.fleet_key.encode(),
        "admin API key": fleet.api_key.encode(),
        "node1's credential": credentials.hive("node1").encode(),
        "node2's credential": credentials.hive("node2").encode(),
        "the prompt": PROMPT.encode(),
    }
    seen = [name for name, secret in secrets.items() if secret in captured]
    assert seen == [], f"in clear text on the LAN: {seen}"
    assert beating == ["node1", "node2"], "both hives beat to the queen over the LAN (over TLS)"
    assert all(answer.strip() for answer in answers)
