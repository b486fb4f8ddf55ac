"""A hive reads file:// models only from the folders hive.yaml allows it (hives[].model_dirs, or exactly the
file:// models its workers use), through a real hive daemon: no other path, no symlink or '..' out of a
folder, and a sha256 mismatch never tells the digest it found."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx

from rbee.spec import load
from tests.hive_process import hive_daemon
from tests.models import tiny_gguf


def _add(client: httpx.Client, source: str, **extra: str) -> str:
    answer = client.post("/v1/models", json={"name": "m", "source": source, **extra})
    assert answer.status_code == 200, answer.text
    return answer.text


def test_the_hive_reads_only_inside_its_model_dirs(tmp_path: Path) -> None:
    allowed, secret = tmp_path / "models", tmp_path / "private"
    allowed.mkdir()
    secret.mkdir()
    (allowed / "ok.gguf").write_bytes(tiny_gguf())
    (secret / "key.gguf").write_bytes(tiny_gguf())
    os.symlink(secret / "key.gguf", allowed / "link.gguf")
    with hive_daemon(tmp_path / "hive", "files", model_dirs=(str(allowed),)) as (client, _):
        outside = [
            f"file://{secret}/key.gguf",  # another folder
            f"file://{allowed}/../private/key.gguf",  # '..' out of the folder
            f"file://{allowed}/link.gguf",  # a symlink out of it
            "file:///etc/passwd",
        ]
        for source in outside:
            text = _add(client, source)
            refused = "is outside this hive's model_dirs" in text or "contains '..'" in text
            assert refused and '"done":true' not in text, (source, text)
        assert client.get("/v1/state").json()["catalog"] == []
        assert '"done":true' in _add(client, f"file://{allowed}/ok.gguf")
        assert client.get("/v1/state").json()["model_dirs"] == [str(allowed)]


def test_a_hive_with_no_model_dirs_reads_no_file(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(tiny_gguf())
    with hive_daemon(tmp_path / "hive", "nofiles") as (client, _):
        assert "outside this hive's model_dirs (none)" in _add(client, f"file://{tmp_path}/m.gguf")


def test_a_sha256_mismatch_does_not_tell_the_digest(tmp_path: Path) -> None:
    data = tiny_gguf()
    (tmp_path / "m.gguf").write_bytes(data)
    with hive_daemon(tmp_path / "hive", "digest", model_dirs=(str(tmp_path),)) as (client, _):
        text = _add(client, f"file://{tmp_path}/m.gguf", sha256="0" * 64)
    assert "does not match the sha256" in text
    assert hashlib.sha256(data).hexdigest() not in text


def test_model_dirs_default_to_exactly_the_files_workers_use() -> None:
    spec = load.loads(
        "hives: [{name: a}, {name: b, listen: 127.0.0.1:9300, data_dir: /srv/rbee-b, model_dirs: [/srv/models]}]\n"
        "models:\n  - {name: one, source: 'file:///data/one.gguf'}\n  - {name: two, source: 'file:///srv/models/x/two.gguf'}\n"
        "  - {name: hub, source: 'hf://org/repo/m.gguf'}\n"
        "workers:\n  - {model: one, hive: a}\n  - {model: hub, hive: a}\n  - {model: two, hive: b}\n"
    )
    assert spec.model_dirs(spec.hives[0]) == ("/data/one.gguf",)
    assert spec.model_dirs(spec.hives[1]) == ("/srv/models",)
