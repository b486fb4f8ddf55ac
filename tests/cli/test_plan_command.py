"""`rbee plan`, `rbee schema` and `rbee validate` as a user runs them: a real process, real exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import yaml

from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "hive.yaml.example"


def rbee(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rbee", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(cwd),
            "NO_COLOR": "1",
            "RBEE_HOME": "/nonexistent/rbee-home",
            "HF_ENDPOINT": "http://127.0.0.1:1",  # no test plan asks the real Hub
            **(env or {}),
        },
    )


def local_spec(tmp_path: Path, workers: str = "  - {model: smol, hive: box, replicas: 2}\n") -> Path:
    path = tmp_path / "hive.yaml"
    path.write_text(
        f"hives:\n  - {{name: box, listen: '127.0.0.1:{free_port()}', data_dir: '{tmp_path / 'data'}'}}\n"
        "models:\n  - {name: smol, source: 'file:///models/smol.gguf'}\n"
        f"workers:\n{workers}"
    )
    return path


def test_example_plans_the_full_cold_start_and_exits_2() -> None:
    result = rbee("plan", str(EXAMPLE), "--detailed-exitcode", "--timeout", "1")
    assert result.returncode == 2, result.stderr
    assert "hive workstation (local, http://127.0.0.1:9200)" in result.stdout
    assert "+ install   hive cuda-box" in result.stdout
    assert "+ start     workers qwen-chat [gguf, cuda:0] x2" in result.stdout
    assert result.stdout.rstrip().endswith("Plan: 22 to add, 0 to change, 0 to destroy.")
    assert "\x1b[" not in result.stdout, "no colour when stdout is not a terminal"


def test_without_detailed_exitcode_changes_exit_0(tmp_path: Path) -> None:
    result = rbee("plan", str(local_spec(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert "Plan: 4 to add, 0 to change, 0 to destroy." in result.stdout


def test_bad_files_exit_1_with_one_line_and_change_nothing(tmp_path: Path) -> None:
    typo = local_spec(tmp_path, "  - {model: smol, hive: box, replcas: 2}\n")
    (tmp_path / "u").mkdir()
    unknown = local_spec(tmp_path / "u", "  - {model: llama, hive: box}\n")
    tabbed = tmp_path / "tabs.yaml"
    tabbed.write_text("hives:\n\t- name: box\n")
    for path, words in [
        (typo, "workers[0].replcas: unknown field"),
        (unknown, "workers[0].model: unknown model"),
        (tabbed, "a tab character is used for indentation"),
    ]:
        before = sorted(p.name for p in tmp_path.rglob("*"))
        result = rbee("plan", str(path), "--detailed-exitcode", "-o", str(tmp_path / "plan.json"))
        assert result.returncode == 1
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0] and f"{path}:" in lines[0], result.stderr
        assert sorted(p.name for p in tmp_path.rglob("*")) == before, "a bad file writes nothing"


def test_saved_plan_records_the_observed_state(tmp_path: Path) -> None:
    spec = local_spec(tmp_path)
    out = tmp_path / "plan.json"
    result = rbee("plan", str(spec), "-o", str(out))
    assert result.returncode == 0, result.stderr
    saved = json.loads(out.read_text())
    assert saved["observed"]["hives"][0]["status"] == "down"
    assert len(saved["observed_digest"]) == 64
    assert [change["action"] for change in saved["changes"]] == [
        "install-hive",
        "start-hive",
        "add-model",
        "start-workers",
    ]
    assert saved["summary"] == {"add": 4, "change": 0, "destroy": 0, "blocked": 0}
    as_json = json.loads(rbee("plan", str(spec), "--json").stdout)
    assert as_json["changes"] == saved["changes"]


def test_schema_validates_the_example_and_rejects_a_typo() -> None:
    result = rbee("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    document = yaml.safe_load(EXAMPLE.read_text())
    jsonschema.validate(document, schema)
    document["workers"][0]["replcas"] = 2
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(document))
    assert errors and "replcas" in errors[0].message


def test_validate_counts_what_the_file_asks_for() -> None:
    result = rbee("validate", str(EXAMPLE))
    assert result.returncode == 0
    assert "3 hives, 6 models, 9 worker replicas" in result.stdout


def test_apply_without_a_terminal_needs_yes_and_changes_nothing(tmp_path: Path) -> None:
    spec = local_spec(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "rbee", "apply", str(spec)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "NO_COLOR": "1", "RBEE_HOME": str(tmp_path / "home")},
    )
    assert result.returncode == 1
    assert "Refusing to apply without confirmation" in result.stderr
    assert "Plan: 4 to add" in result.stdout
    assert not (tmp_path / "data").exists() and not (tmp_path / "home").exists()


def test_apply_refuses_a_file_that_is_not_a_plan(tmp_path: Path) -> None:
    bogus = tmp_path / "plan.json"
    bogus.write_text('{"hello": 1}')
    result = rbee("apply", str(bogus), "--yes")
    assert result.returncode == 1 and "is not a saved rbee plan" in result.stderr


def _saved(tmp_path: Path) -> tuple[Path, dict[str, object]]:
    out = tmp_path / "plan.json"
    made = rbee("plan", str(local_spec(tmp_path)), "-o", str(out), "--timeout", "1")
    assert made.returncode == 0, made.stderr
    return out, json.loads(out.read_text())


def test_a_saved_plan_with_edited_changes_is_refused(tmp_path: Path) -> None:
    """The changes are planned again from the saved spec and live state: an edited change list (here a hive
    install pointed at other steps) is not executed."""
    out, saved = _saved(tmp_path)
    changes = saved["changes"]
    assert isinstance(changes, list)
    changes[0]["reason"] = "nothing to see"
    changes.append(dict(changes[-1], id="box/workers/evil/start"))
    out.write_text(json.dumps(saved))
    result = rbee("apply", str(out), "--yes")
    assert result.returncode == 1
    assert "its changes are not what its spec and the live state give; make a new plan" in result.stderr
    assert not (tmp_path / "data").exists(), "nothing was installed"


def test_a_saved_plan_whose_spec_fails_the_checks_is_refused(tmp_path: Path) -> None:
    out, saved = _saved(tmp_path)
    spec = saved["spec"]
    assert isinstance(spec, dict)
    spec["workers"] = [{"model": "ghost", "hive": "box"}]
    out.write_text(json.dumps(saved))
    result = rbee("apply", str(out), "--yes")
    assert result.returncode == 1 and "its spec is not valid: workers.0.model: unknown model 'ghost'" in result.stderr
