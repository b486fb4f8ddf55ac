"""Rendered plans compared with golden files. After a deliberate change to the output, regenerate with
`RBEE_UPDATE_GOLDEN=1 make test` and review the diff."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from rbee.plan import render
from rbee.plan.actions import Plan
from rbee.spec import load
from tests.plan.test_cases import plan_case

HERE = Path(__file__).parent
GOLDEN = ["empty_to_full", "conflicting_names", "hive_unreachable", "full_to_noop", "remove_model_in_use"]


@pytest.mark.parametrize("name", GOLDEN)
def test_render_matches_golden(name: str) -> None:
    case = yaml.safe_load((HERE / "cases" / f"{name}.yaml").read_text())
    spec = load.loads(yaml.safe_dump(case["desired"]), "desired")
    rendered = render.text(plan_case(case), spec)
    golden = HERE / "golden" / f"{name}.txt"
    if os.environ.get("RBEE_UPDATE_GOLDEN"):
        golden.write_text(rendered)
    assert rendered == golden.read_text()


def test_a_matching_fleet_says_no_changes() -> None:
    case = yaml.safe_load((HERE / "cases" / "full_to_noop.yaml").read_text())
    spec = load.loads(yaml.safe_dump(case["desired"]), "desired")
    text = render.text(plan_case(case), spec, show_unchanged=False)
    assert text == "No changes. Live state matches hive.yaml.\n"


def test_summary_counts_blocked_targets() -> None:
    assert render.summary_line(Plan(()).summary) == "No changes. Live state matches hive.yaml."
