"""hf:// models through the real huggingface_hub code, against a local server speaking the Hub protocol,
into a real hive daemon: what is good enters the catalog, what is not is refused and leaves nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.hive_process import hive_daemon
from tests.hub import Hub
from tests.models import tiny_gguf
from tests.servers import serve

pytestmark = pytest.mark.slow
GOOD = tiny_gguf(256)
BIG = tiny_gguf(600_000)  # 2.4 MB
HUGE = tiny_gguf(6_000_000)  # 24 MB: more than huggingface_hub's 10 MB write chunk, so a cut leaves a partial file


@pytest.fixture(scope="module")
def hub_server() -> Iterator[tuple[Hub, str]]:
    hub = Hub(
        cut_once={"lab/flaky/big.gguf"},
        cut_then_down={"lab/flaky/huge.gguf", "lab/flaky-repo/weights/part.safetensors"},
        cut_then_wrong_range={"lab/proxied/big.gguf"},
        oversized={"lab/padded/tiny.gguf"},
        slow={"lab/slow/big.gguf"},
        repos={
            "lab/flaky": {"big.gguf": BIG, "huge.gguf": HUGE},
            "lab/flaky-repo": {"config.json": b'{"model_type": "llama"}', "weights/part.safetensors": HUGE},
            "lab/tiny-gguf": {"tiny.gguf": GOOD, "README.md": b"# tiny\n"},
            "lab/proxied": {"big.gguf": BIG},
            "lab/padded": {"tiny.gguf": GOOD},
            "lab/slow": {"big.gguf": BIG},
            "lab/with-code": {
                "config.json": b'{"model_type": "llama", "auto_map": {"AutoModel": "modeling.Evil"}}',
                "model.safetensors": GOOD,
                "modeling.py": b"import os; os.system('touch /tmp/pwned')\n",
                "pytorch_model.bin": b"a pickle that runs code",
                "sub/extra.pkl": b"another pickle",
            },
            "lab/broken": {"cut.gguf": GOOD[: len(GOOD) // 2], "not.gguf": b"PK\x03\x04 a zip, not a model" * 10},
        },
    )
    with serve(hub.app()) as port:
        yield hub, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def hub(hub_server: tuple[Hub, str]) -> str:
    return hub_server[1]


@pytest.fixture(scope="module")
def hive(hub: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Path]]:
    root = tmp_path_factory.mktemp("hfhive")
    env = {**os.environ, "HF_ENDPOINT": hub, "HF_HOME": str(root / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    with hive_daemon(root, "hf", env) as (client, _):
        yield client, root


def add(client: httpx.Client, name: str, source: str) -> list[tuple[str | None, dict[str, object]]]:
    events, event = [], None
    with client.stream("POST", "/v1/models", json={"name": name, "source": source}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                events.append((event, json.loads(line[5:])))
                event = None
    return events


def catalog(client: httpx.Client) -> list[str]:
    return [entry["name"] for entry in client.get("/v1/state").json()["catalog"]]


def leftovers(root: Path) -> list[str]:
    models = root / "models"
    return sorted(path.name for path in models.iterdir()) if models.exists() else []


def test_a_gguf_file_downloads_with_progress_into_the_catalog(hive: tuple[httpx.Client, Path]) -> None:
    client, root = hive
    events = add(client, "tiny", "hf://lab/tiny-gguf/tiny.gguf@main")
    assert events[-1][1]["done"] is True
    assert any(data.get("stage") == "download" for _, data in events)
    assert "tiny" in catalog(client)
    stored = root / "models" / "tiny" / "tiny.gguf"
    assert stored.read_bytes() == GOOD


def test_a_missing_repo_is_a_clear_error_and_changes_nothing(hive: tuple[httpx.Client, Path]) -> None:
    client, root = hive
    before = (catalog(client), leftovers(root))
    event, data = add(client, "ghost", "hf://lab/no-such-repo/model.gguf")[-1]
    assert event == "error"
    assert "hf://lab/no-such-repo does not exist" in str(data["error"])
    assert (catalog(client), leftovers(root)) == before


def test_a_missing_file_is_a_clear_error(hive: tuple[httpx.Client, Path]) -> None:
    client, _ = hive
    event, data = add(client, "ghost", "hf://lab/tiny-gguf/other.gguf")[-1]
    assert event == "error" and "has no file other.gguf" in str(data["error"])
    assert "ghost" not in catalog(client)


def test_a_truncated_gguf_is_rejected(hive: tuple[httpx.Client, Path]) -> None:
    client, root = hive
    before = leftovers(root)
    event, data = add(client, "cut", "hf://lab/broken/cut.gguf")[-1]
    assert event == "error" and "is truncated" in str(data["error"])
    assert "cut" not in catalog(client)
    assert leftovers(root) == before, "no partial download is left behind"


def test_a_file_that_is_not_gguf_is_rejected(hive: tuple[httpx.Client, Path]) -> None:
    client, _ = hive
    event, data = add(client, "zip", "hf://lab/broken/not.gguf")[-1]
    assert event == "error" and "is not a GGUF file" in str(data["error"])
    assert "zip" not in catalog(client)


def test_a_sha256_mismatch_is_rejected(hive: tuple[httpx.Client, Path]) -> None:
    client, _ = hive
    with client.stream(
        "POST",
        "/v1/models",
        json={
            "name": "tampered",
            "source": "hf://lab/tiny-gguf/tiny.gguf",
            "sha256": "0" * 64,
        },
    ) as response:
        body = response.read().decode()
    assert "event: error" in body and "does not match the sha256" in body
    assert "tampered" not in catalog(client)


def test_a_cut_connection_is_retried_and_the_file_arrives_whole(
    hive: tuple[httpx.Client, Path], hub_server: tuple[Hub, str]
) -> None:
    client, root = hive
    hub, _ = hub_server
    events = add(client, "flaky", "hf://lab/flaky/big.gguf")
    assert events[-1][1].get("done") is True, events[-1]
    gets = [line for line in hub.requests if line.startswith("GET lab/flaky/big.gguf")]
    assert len(gets) >= 2, hub.requests
    assert (root / "models" / "flaky" / "big.gguf").read_bytes() == BIG


def test_a_download_that_broke_off_resumes_from_its_offset_on_the_next_attempt(
    hive: tuple[httpx.Client, Path], hub_server: tuple[Hub, str]
) -> None:
    client, root = hive
    hub, _ = hub_server
    event, data = add(client, "huge", "hf://lab/flaky/huge.gguf")[-1]
    assert event == "error" and "the next attempt resumes where this one stopped" in str(data["error"])
    assert "huge" not in catalog(client)
    partial = [p for p in (root / "models" / ".partial-huge").rglob("*.partial")]
    assert len(partial) == 1 and 0 < partial[0].stat().st_size < len(HUGE)
    offset = partial[0].stat().st_size
    events = add(client, "huge", "hf://lab/flaky/huge.gguf")
    assert events[-1][1].get("done") is True, events[-1]
    gets = [line for line in hub.requests if line.startswith("GET lab/flaky/huge.gguf")]
    assert gets[-1] == f"GET lab/flaky/huge.gguf bytes={offset}-", gets
    assert (root / "models" / "huge" / "huge.gguf").read_bytes() == HUGE
    assert not (root / "models" / ".partial-huge").exists()


def test_a_whole_repo_keeps_the_files_it_finished_and_resumes_the_one_that_broke_off(
    hive: tuple[httpx.Client, Path], hub_server: tuple[Hub, str]
) -> None:
    client, root = hive
    hub, _ = hub_server
    event, data = add(client, "repo", "hf://lab/flaky-repo")[-1]
    assert event == "error" and "resumes where this one stopped" in str(data["error"]), data
    assert "repo" not in catalog(client)
    offset = (root / "models" / ".partial-repo" / "weights" / "part.safetensors.partial").stat().st_size
    assert 0 < offset < len(HUGE)
    events = add(client, "repo", "hf://lab/flaky-repo")
    assert events[-1][1].get("done") is True, events[-1]
    gets = [line for line in hub.requests if line.startswith("GET lab/flaky-repo/")]
    assert gets.count("GET lab/flaky-repo/config.json") == 1, "the finished file is not fetched again"
    assert gets[-1] == f"GET lab/flaky-repo/weights/part.safetensors bytes={offset}-", gets
    assert (root / "models" / "repo" / "weights" / "part.safetensors").read_bytes() == HUGE
    assert sorted(p.name for p in (root / "models" / "repo").rglob("*") if p.is_file()) == [
        "config.json",
        "part.safetensors",
    ]


def test_a_resume_answered_from_byte_0_is_not_appended(hive: tuple[httpx.Client, Path]) -> None:
    """The first GET breaks off halfway; the resume asks for the rest and gets a 206 from byte 0 (a broken proxy):
    appending it would make a file of the wrong bytes. It is refused and dropped; the next attempt is whole."""
    client, root = hive
    event, data = add(client, "proxied", "hf://lab/proxied/big.gguf")[-1]
    assert event == "error" and "with bytes from 0" in str(data["error"]), data
    assert not list((root / "models").glob(".partial-proxied/*.partial")), "the bad partial file is dropped"
    assert add(client, "proxied", "hf://lab/proxied/big.gguf")[-1][1].get("done") is True
    assert (root / "models" / "proxied" / "big.gguf").read_bytes() == BIG


def test_a_fetch_outlives_the_client_that_asked_and_a_second_ask_attaches(
    hive: tuple[httpx.Client, Path], hub_server: tuple[Hub, str]
) -> None:
    """The first client leaves after the first progress event; the download goes on as the hive's job, and a
    second request for the model follows that job to its end: one GET of the file in all."""
    client, root = hive
    hub, _ = hub_server
    with client.stream("POST", "/v1/models", json={"name": "slow", "source": "hf://lab/slow/big.gguf"}) as first:
        for line in first.iter_lines():
            if line.startswith("data:") and '"bytes"' in line:
                break  # the client goes away mid-download
    second = add(client, "slow", "hf://lab/slow/big.gguf")
    assert second[-1][1].get("done") is True and not second[-1][1].get("already"), second[-1]
    assert [line for line in hub.requests if line.startswith("GET lab/slow/")] == ["GET lab/slow/big.gguf"]
    assert (root / "models" / "slow" / "big.gguf").read_bytes() == BIG
    with client.stream("POST", "/v1/models", json={"name": "busy", "source": "hf://lab/slow/big.gguf"}) as running:
        next(line for line in running.iter_lines() if '"bytes"' in line)
        other = client.post("/v1/models", json={"name": "busy", "source": "hf://lab/tiny-gguf/tiny.gguf"})
        assert other.status_code == 409 and "being fetched from another source" in other.text, other.text


def test_more_bytes_than_declared_are_refused(hive: tuple[httpx.Client, Path]) -> None:
    client, root = hive
    event, data = add(client, "padded", "hf://lab/padded/tiny.gguf")[-1]
    assert event == "error" and "sent more than the" in str(data["error"]), data
    assert "padded" not in catalog(client)
    assert not (root / "models" / "padded").exists()


def test_a_whole_repo_comes_without_its_code_and_pickles(hive: tuple[httpx.Client, Path]) -> None:
    client, root = hive
    assert add(client, "coded", "hf://lab/with-code")[-1][1].get("done") is True
    held = sorted(p.name for p in (root / "models" / "coded").rglob("*") if p.is_file())
    assert held == ["config.json", "model.safetensors"]


def test_a_model_that_opts_in_gets_its_code_files(hive: tuple[httpx.Client, Path]) -> None:
    client, root = hive
    with client.stream(
        "POST", "/v1/models", json={"name": "coded-all", "source": "hf://lab/with-code", "code_files": "fetch"}
    ) as response:
        assert '"done":true' in response.read().decode()
    held = sorted(p.name for p in (root / "models" / "coded-all").rglob("*") if p.is_file())
    assert held == ["config.json", "extra.pkl", "model.safetensors", "modeling.py", "pytorch_model.bin"]


def test_a_model_that_does_not_fit_is_refused_before_downloading(hub: str, tmp_path: Path) -> None:
    small = tmp_path / "small-disk"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        env = {**os.environ, "HF_ENDPOINT": hub, "HF_HOME": str(tmp_path / "hf-home")}
        env.pop("HF_HUB_OFFLINE", None)
        with hive_daemon(small, "tiny-disk", env) as (client, _):
            event, data = add(client, "big", "hf://lab/flaky/big.gguf")[-1]
            assert event == "error"
            assert "the model needs 2.4 MB and the hive's disk has" in str(data["error"])
            assert catalog(client) == []
            assert [p.name for p in (small / "models").iterdir()] == []
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
