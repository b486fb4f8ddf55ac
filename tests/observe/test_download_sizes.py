"""What a plan would download, asked of a local server that speaks the Hub's protocol (tests/hub.py): single files
(plain and redirected to a CDN), whole repos across tree pages without the code files a hive leaves behind, only
for hives that lack the model, and never waiting past the bound on a Hub that does not answer."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rbee.api.state import CatalogEntry, HiveObservation, HiveState, HiveStatus, ObservedState
from rbee.observe import downloads
from rbee.plan import planner
from rbee.spec import load
from rbee.spec.schema import HiveFile
from tests.cli.test_plan_command import rbee
from tests.hub import Hub
from tests.servers import serve, stalling_port

WEIGHTS = b"w" * 3000
REPO = {"config.json": b"{}" * 10, "model.safetensors": WEIGHTS, "modeling.py": b"x" * 500, "extra.bin": b"p" * 70}


@pytest.fixture(scope="module")
def hub() -> Iterator[tuple[Hub, str]]:
    server = Hub(repos={"lab/one": {"m.gguf": WEIGHTS}, "lab/lfs": {"m.gguf": WEIGHTS}, "lab/repo": REPO})
    server.on_cdn.add("lab/lfs/m.gguf")
    server.page_size = 1  # every file on its own page
    with serve(server.app()) as port:
        yield server, f"http://127.0.0.1:{port}"


def use_hub(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """Point this process's huggingface_hub at `url` (it reads HF_ENDPOINT once, at import; `rbee` reads it fresh)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(constants, "ENDPOINT", url)


def spec(*sources: str, code_files: str = "skip") -> HiveFile:
    models = "".join(f"  - {{name: m{i}, source: '{s}', code_files: {code_files}}}\n" for i, s in enumerate(sources))
    workers = "".join(f"  - {{model: m{i}, hive: box}}\n" for i in range(len(sources)))
    return load.loads(f"hives: [{{name: box}}]\nmodels:\n{models}workers:\n{workers}", "hive.yaml")


def test_single_files_whole_repos_and_missing_ones(hub: tuple[Hub, str], monkeypatch: pytest.MonkeyPatch) -> None:
    _, url = hub
    use_hub(monkeypatch, url)
    wanted = spec("hf://lab/one/m.gguf", "hf://lab/lfs/m.gguf", "hf://lab/repo", "hf://lab/gone/m.gguf")
    found = downloads.sizes(wanted, ObservedState(), timeout=5).downloads
    assert {item.source: item.bytes for item in found} == {
        "hf://lab/one/m.gguf": 3000,
        "hf://lab/lfs/m.gguf": 3000,  # from X-Linked-Size; the CDN (port 1) is never asked
        "hf://lab/repo": 3000 + 20,  # four pages, without modeling.py and extra.bin
    }
    with_code = downloads.sizes(spec("hf://lab/repo", code_files="fetch"), ObservedState(), timeout=5)
    assert [item.bytes for item in with_code.downloads] == [3000 + 20 + 500 + 70]


def test_a_hive_that_has_the_model_does_not_ask(hub: tuple[Hub, str], monkeypatch: pytest.MonkeyPatch) -> None:
    server, url = hub
    use_hub(monkeypatch, url)
    entry = CatalogEntry(name="m0", source="hf://lab/one/m.gguf", format="gguf", size_bytes=3000)
    state = HiveState(name="box", version="0", catalog=(entry,))
    observed = ObservedState(hives=(HiveObservation(name="box", status=HiveStatus.RUNNING, state=state),))
    before = len(server.requests)
    assert downloads.sizes(spec("hf://lab/one/m.gguf"), observed, timeout=5) == observed
    assert len(server.requests) == before


def test_a_hub_that_never_answers_costs_the_bound_and_no_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    with stalling_port() as port:
        use_hub(monkeypatch, f"http://127.0.0.1:{port}")
        started = time.monotonic()
        observed = downloads.sizes(spec("hf://lab/one/m.gguf", "hf://lab/repo"), ObservedState(), timeout=0.5)
        assert time.monotonic() - started < 3 and observed.downloads == ()
    plan = planner.make_plan(spec("hf://lab/one/m.gguf"), observed)
    assert "to download" not in " ".join(change.reason for change in plan.changes)


def test_rbee_plan_shows_the_download_size(hub: tuple[Hub, str], tmp_path: Path) -> None:
    _, url = hub
    path = tmp_path / "hive.yaml"
    path.write_text(
        f"hives: [{{name: box, data_dir: '{tmp_path / 'data'}'}}]\n"
        "models: [{name: repo, source: 'hf://lab/repo'}]\nworkers: [{model: repo, hive: box}]\n"
    )
    result = rbee("plan", str(path), "--timeout", "1", env={"HF_ENDPOINT": url})
    assert result.returncode == 0, result.stderr
    assert "not in the catalog; fetch hf://lab/repo (3.0 KB to download)" in result.stdout, result.stdout
