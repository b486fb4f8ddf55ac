"""A data dir rbee did not make is not taken: `rbee apply` refuses a folder of someone else's files with one
sentence, and leaves the folder, its files and its mode as they were (a real local hive, a real pyinfra run)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests.fleet import make_fleet
from tests.models import tiny_gguf

pytestmark = pytest.mark.slow


def test_apply_refuses_a_folder_of_someone_elses_files(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(tiny_gguf())
    fleet = make_fleet(tmp_path, f"file://{model}")
    data = tmp_path / "hive"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    (data / "models").mkdir()
    (data / "models" / "thesis.tex").write_text("three years of work")
    try:
        result = fleet.rbee("apply", str(fleet.spec), "--yes", timeout=240)
        assert result.returncode != 0, result.stdout
        said = result.stdout + result.stderr
        assert "already holds files that rbee did not put there" in said, said
        assert (data / "models" / "thesis.tex").read_text() == "three years of work"
        assert stat.S_IMODE(data.stat().st_mode) == 0o755
        assert sorted(path.name for path in data.iterdir()) == ["models"]
    finally:
        fleet.rbee("destroy", str(fleet.spec), "--yes", timeout=120)
    assert (data / "models" / "thesis.tex").exists(), "destroy removed a file rbee did not make"
