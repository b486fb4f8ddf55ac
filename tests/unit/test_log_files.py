"""Reading rbee's log files: the last lines, those since a time (a line without a time belongs to the one
before), a file cut in the middle of a line, and following a file that grows and is rotated."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from rbee.infra import logs


def at(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) + ",000"


def test_the_last_lines_and_those_since_a_time(tmp_path: Path) -> None:
    now = time.time()
    path = tmp_path / "hive.log"
    path.write_text(
        f"{at(now - 3600)} hive INFO old\n"
        f"{at(now - 60)} hive ERROR recent\n"
        "Traceback (most recent call last):\n"
        f"{at(now)} hive INFO newest\n"
    )
    lines, end = logs.last_lines(path, 2)
    assert lines == ["Traceback (most recent call last):", f"{at(now)} hive INFO newest"]
    assert end == path.stat().st_size
    recent, _ = logs.last_lines(path, 100, since=now - 120)
    assert recent == [
        f"{at(now - 60)} hive ERROR recent",
        "Traceback (most recent call last):",
        f"{at(now)} hive INFO newest",
    ]
    assert logs.last_lines(tmp_path / "missing.log", 10) == ([], 0)


def test_a_big_file_is_read_from_its_end_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "worker.log"
    path.write_text("x" * 100 + "\n" + "\n".join(f"line {i}" for i in range(5)) + "\n")
    monkeypatch.setattr(logs, "TAIL_BYTES", 40)
    lines, _ = logs.last_lines(path, 100)
    assert lines and all(line.startswith("line ") for line in lines), "the cut first line is left out"


def test_following_sees_new_lines_and_a_rotated_file(tmp_path: Path) -> None:
    path = tmp_path / "queen.log"
    path.write_text("before\n")

    async def scenario() -> list[str | None]:
        seen: list[str | None] = []
        _, end = logs.last_lines(path, 10)
        stream = logs.follow(path, end, quiet=0.4)

        async def read(count: int) -> None:
            while len([s for s in seen if s is not None]) < count:
                seen.append(await asyncio.wait_for(anext(stream), 5))

        with path.open("a") as file:
            file.write("one\ntw")
        await read(1)
        with path.open("a") as file:
            file.write("o\n")
        await read(2)
        path.write_text("rotated\n")  # shorter than before: read again from its start
        await read(3)
        seen.append(await asyncio.wait_for(anext(stream), 5))  # quiet: a keep-alive
        await stream.aclose()
        return seen

    seen = asyncio.run(scenario())
    assert [s for s in seen if s is not None] == ["one", "two", "rotated"]
    assert seen[-1] is None
