"""Planner table tests: each file in cases/ holds a desired hive.yaml, an observed state and the plan expected."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from rbee.api.state import ObservedState
from rbee.plan import planner
from rbee.plan.actions import Change, Plan
from rbee.spec import load

CASES = sorted((Path(__file__).parent / "cases").glob("*.yaml"))


def describe(change: Change) -> str:
    text = f"{change.symbol} {change.action} {change.target}"
    if change.replicas:
        text += f" x{change.replicas}"
    if change.worker_ids:
        text += f" [{','.join(change.worker_ids)}]"
    return text


def plan_case(case: dict[str, Any]) -> Plan:
    desired = load.loads(yaml.safe_dump(case["desired"]), "desired")
    observed = ObservedState.model_validate(case.get("observed") or {})
    return planner.make_plan(desired, observed, version="0.1.0")


@pytest.mark.parametrize("path", CASES, ids=[path.stem for path in CASES])
def test_case(path: Path) -> None:
    case = yaml.safe_load(path.read_text())
    plan = plan_case(case)
    expected = case["expected"]
    assert [describe(change) for change in plan.changes] == expected["changes"]
    summary = plan.summary
    assert {
        "add": summary.add,
        "change": summary.change,
        "destroy": summary.destroy,
        "blocked": summary.blocked,
    } == expected["summary"]
    by_id = {change.id: change for change in plan.changes}
    for change_id, requires in expected.get("requires", {}).items():
        assert list(by_id[change_id].requires) == requires, change_id
    for change_id, reason in expected.get("reasons", {}).items():
        assert reason in by_id[change_id].reason, change_id


@pytest.mark.parametrize("path", CASES, ids=[path.stem for path in CASES])
def test_changes_come_after_what_they_require(path: Path) -> None:
    plan = plan_case(yaml.safe_load(path.read_text()))
    ids = [change.id for change in plan.changes]
    assert len(ids) == len(set(ids)), "change ids are unique"
    for position, change in enumerate(plan.changes):
        for required in change.requires:
            assert required in ids[:position], f"{change.id} requires {required}, which is not planned before it"


def test_case_files_exist_for_the_required_situations() -> None:
    names = {path.stem for path in CASES}
    assert {
        "empty_to_full",
        "full_to_noop",
        "scale_up",
        "scale_down",
        "remove_model_in_use",
        "hive_unreachable",
        "conflicting_names",
    } <= names


def test_the_planner_is_deterministic() -> None:
    case = yaml.safe_load((Path(__file__).parent / "cases" / "empty_to_full.yaml").read_text())
    assert plan_case(case) == plan_case(case)
