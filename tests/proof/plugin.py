"""`pytest --proof-bundle DIR` (on in `make test`): every test leaves its proof bundle in DIR (tests/proof/bundle.py).
The queens and keepers the tests start inherit RBEE_TRANSCRIPT, set here before any of them starts, and append
to one session transcript; at the end each test gets the lines of its own time."""

from __future__ import annotations

import os
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from rbee.clients.transcript import VARIABLE
from tests.proof import bundle

_RUNS: dict[str, bundle.Run] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--proof-bundle", metavar="DIR", default=None, help="Write each test's proof bundle into DIR.")


def _root(config: pytest.Config) -> Path | None:
    value = config.getoption("--proof-bundle")
    return Path(value) if value else None


def pytest_configure(config: pytest.Config) -> None:
    root = _root(config)
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
        session = root / ".session.ndjson"
        session.unlink(missing_ok=True)
        os.environ[VARIABLE] = str(session.resolve())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    started = time.time()
    yield
    run = _RUNS.setdefault(item.nodeid, bundle.Run(item.nodeid, started, time.time(), "passed"))
    run.started, run.ended = started, time.time()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    run = _RUNS.setdefault(report.nodeid, bundle.Run(report.nodeid, time.time(), time.time(), "passed"))
    if report.failed:
        run.outcome, run.failure = f"failed ({report.when})", str(report.longrepr)
    elif report.skipped and run.outcome == "passed":
        run.outcome = "skipped"


def pytest_sessionfinish(session: pytest.Session, exitstatus: Any) -> None:
    root = _root(session.config)
    if root is None or not _RUNS:
        return
    records = bundle.read_transcript(root / ".session.ndjson")
    machine = {"versions": bundle.versions(), "hardware": bundle.hardware()}
    for run in _RUNS.values():
        bundle.write(root, run, records, machine)
