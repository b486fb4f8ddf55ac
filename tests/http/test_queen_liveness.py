"""A worker that stops answering without dying (SIGSTOP): the queen ends its streams with an error within the
idle timeout and frees their slots, whether it froze mid-answer or before its first byte. The worker is
bench/loads' synthetic one, as its own process, so it can be frozen for real."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from rbee.api import sse
from rbee.queen import daemon
from rbee.queen.parts import Queen
from rbee.queen.server import create_app
from rbee.spec import load
from tests.http.queens import BASE_URL, CREDENTIALS, KEYED, admin_key_file, hive_auth
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
SYNTHETIC = ("--workers", "1", "--slots", "1", "--rate", "20")
SPEC = """
queen: {{queue_timeout: 4s, stream_idle_timeout: 1s}}
hives: [{{name: synthetic, listen: '127.0.0.1:{port}'}}]
models: [{{name: synthetic, source: 'file:///m/synthetic.gguf', idle_timeout: 0}}]
workers: [{{model: synthetic, hive: synthetic}}]
"""


EMBEDDING_SPEC = """
queen: {{queue_timeout: 4s}}
hives: [{{name: synthetic, listen: '127.0.0.1:{port}'}}]
models: [{{name: synthetic, source: 'file:///m/synthetic.gguf', kind: embedding, idle_timeout: 0, request_timeout: 1s}}]
workers: [{{model: synthetic, hive: synthetic}}]
"""
"""The same worker, taken for an embedding model: its calls are answered whole (JSON), not streamed."""


@pytest.fixture
def frozen_worker(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Queen, TestClient, subprocess.Popen[bytes], int]]:
    spec = getattr(request, "param", SPEC)
    port = free_port()
    worker = subprocess.Popen(
        [sys.executable, str(ROOT / "bench/loads/synthetic_worker.py"), "--port", str(port), *SYNTHETIC],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            state = httpx.get(f"http://127.0.0.1:{port}/v1/state", timeout=1, trust_env=False).json()
            break
        except httpx.HTTPError:
            assert time.monotonic() < deadline, "the synthetic worker did not start"
            time.sleep(0.05)
    queen = daemon.build(tmp_path, CREDENTIALS, admin_key_file=admin_key_file(tmp_path))
    queen.fleet.apply(load.loads(spec.format(port=port)), "hive.yaml")
    client = TestClient(create_app(queen), base_url=BASE_URL, headers=KEYED)
    with client:
        watcher = client.portal.start_task_soon(daemon.watch_streams, queen)  # type: ignore[union-attr]
        beat = client.post("/v2/hives/synthetic/heartbeat", json=state, headers=hive_auth("synthetic"))
        assert beat.status_code == 200
        try:
            yield queen, client, worker, port
        finally:
            os.kill(worker.pid, signal.SIGCONT)
            worker.kill()
            worker.wait()
            watcher.cancel()
            client.portal.call(daemon.close, queen)  # type: ignore[union-attr]


def test_a_worker_frozen_mid_stream_ends_it_with_an_error_and_frees_its_slot(
    frozen_worker: tuple[Queen, TestClient, subprocess.Popen[bytes], int],
) -> None:
    queen, client, worker, _ = frozen_worker
    found: list[sse.Event] = []
    ended: list[float] = []

    def read() -> None:
        body = {"model": "synthetic", "prompt": "x", "max_tokens": 10_000, "stream": True}
        with client.stream("POST", "/v1/completions", json=body) as reply:
            parser = sse.Parser()
            for chunk in reply.iter_bytes():
                found.extend(parser.feed(chunk))
        ended.append(time.monotonic())

    reader = threading.Thread(target=read)
    reader.start()
    while len(found) < 5:
        time.sleep(0.05)
    os.kill(worker.pid, signal.SIGSTOP)
    frozen = time.monotonic()
    reader.join(timeout=15)
    assert not reader.is_alive(), "the client was left hanging"
    assert ended[0] - frozen < 1 + 2.5, "ended within the idle timeout and a sweep"
    assert "worker_unresponsive" in found[-2].data and found[-1].data == "[DONE]", found[-2:]
    route = queen.admission.lanes["synthetic"].routes
    assert all(r.in_flight == 0 for r in route.values()), "the slot was given back"
    assert not queen.admission.has_workers("synthetic"), "not offered again until its hive reports it anew"


def test_a_worker_frozen_before_its_first_byte_is_not_waited_for_forever(
    frozen_worker: tuple[Queen, TestClient, subprocess.Popen[bytes], int],
) -> None:
    _, client, worker, _ = frozen_worker
    os.kill(worker.pid, signal.SIGSTOP)
    started = time.monotonic()
    reply = client.post("/v1/completions", json={"model": "synthetic", "prompt": "x", "max_tokens": 3})
    assert time.monotonic() - started < 4 + 2
    assert reply.status_code in (502, 503, 504), reply.text
    assert "nothing for 1 s" in reply.text or reply.status_code != 502


@pytest.mark.parametrize("frozen_worker", [EMBEDDING_SPEC], indirect=True)
def test_a_worker_frozen_during_a_whole_answer_is_waited_for_no_longer_than_the_request_timeout(
    frozen_worker: tuple[Queen, TestClient, subprocess.Popen[bytes], int],
) -> None:
    queen, client, worker, _ = frozen_worker
    os.kill(worker.pid, signal.SIGSTOP)  # it took the connection (the kernel did) and will never answer
    started = time.monotonic()
    reply = client.post("/v1/embeddings", json={"model": "synthetic", "input": "hello"})
    assert time.monotonic() - started < 1 + 2
    assert reply.status_code == 504, reply.text
    assert "did not answer within 1 s" in reply.json()["error"]["message"]
    route = queen.admission.lanes["synthetic"].routes
    assert all(r.in_flight == 0 for r in route.values()), "the slot was given back"
