"""The original rbee's test-001 (62 scenarios) is tracked in features/ by tags: `@test001-N` on the scenario that
covers scenario N. Every tag names a real scenario, and every one of the 62 has its scenario (or, for one the
design removed, a comment that says why)."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import TEST001_SCENARIOS

FEATURES = Path(__file__).parents[2] / "features"
TAG = re.compile(r"@test001-(\w+)")
NOT_APPLICABLE = re.compile(r"^#\s*test001-(\d+) does not apply: \S")
"""A comment that says why a scenario has no rbee counterpart (the design removed what it tested)."""


def tagged() -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for feature in sorted(FEATURES.glob("*.feature")):
        pending: list[str] = []
        for line in feature.read_text().splitlines():
            stripped = line.strip()
            if (why := NOT_APPLICABLE.match(stripped)) is not None:
                found.setdefault(int(why[1]), []).append(f"{feature.name}: does not apply (see the comment)")
            elif stripped.startswith("@"):
                pending.extend(TAG.findall(stripped))
            elif stripped.startswith(("Scenario:", "Scenario Outline:")):
                for tag in pending:
                    assert tag.isdigit(), f"{feature.name}: @test001-{tag} is not a scenario number"
                    found.setdefault(int(tag), []).append(f"{feature.name}: {stripped.split(':', 1)[1].strip()}")
                pending = []
            elif pending and stripped and not stripped.startswith("#"):
                raise AssertionError(f"{feature.name}: tags {pending} are not on a scenario")
    return found


def test_every_one_of_the_62_scenarios_has_its_rbee_scenario() -> None:
    found = tagged()
    assert all(1 <= number <= TEST001_SCENARIOS for number in found), sorted(found)
    missing = [number for number in range(1, TEST001_SCENARIOS + 1) if number not in found]
    print(f"test-001 in features/: {len(found)} of {TEST001_SCENARIOS}")
    assert not missing, f"test-001 scenarios with no rbee scenario in features/: {missing}"
