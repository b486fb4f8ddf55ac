"""Nothing waits forever: a hive that never answers, a pyinfra run that never ends and a lock that is never
released each end the wait with a sentence."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from rbee.api.credentials import FleetCredentials, new_secret
from rbee.apply import executor, lock
from rbee.clients import hive as hive_client
from rbee.infra import job
from rbee.keeper.progress import QuietReporter
from rbee.plan.actions import Action, Plan, Symbol, model_change
from rbee.spec import load
from tests.servers import stalling_port


def test_a_hive_that_never_answers_fails_the_change_within_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hive_client, "CALL_TIMEOUT", hive_client.httpx.Timeout(1.0))
    monkeypatch.setattr(hive_client, "PROGRESS_TIMEOUT", hive_client.httpx.Timeout(1.0))
    with stalling_port() as port:
        spec = load.loads(
            f"hives: [{{name: hung, listen: '127.0.0.1:{port}'}}]\n"
            "models: [{name: m, source: 'file:///m.gguf'}]\nworkers: [{model: m, hive: hung}]\n"
        )
        change = model_change("hung", "m", Action.ADD_MODEL, Symbol.ADD, "test")
        run = executor.Executor(spec, FleetCredentials(new_secret(), new_secret()), QuietReporter())
        started = time.monotonic()
        errors = asyncio.run(run.execute(Plan((change,))))
    assert time.monotonic() - started < 10
    assert "hive hung did not answer in time" in str(errors[change.id])


def test_a_pyinfra_run_past_its_deadline_is_stopped_with_a_sentence() -> None:
    spec = load.loads("hives: [{name: here}]\n")
    work = job.job_for(spec.hives, [job.Step.FACTS], None)
    started = time.monotonic()
    results = asyncio.run(job.run(work, seconds=0.05))
    assert time.monotonic() - started < 5
    assert results["here"].error == "pyinfra did not finish facts within 0 s and was stopped"


def test_a_held_lock_is_waited_for_within_a_bound_that_names_the_holder(tmp_path: Path) -> None:
    with lock.hold(tmp_path, holder="the queen's reconcile pass 7"):
        assert lock.holder_of(tmp_path).startswith("the queen's reconcile pass 7 (pid ")
        started = time.monotonic()
        busy = r"still held by the queen's reconcile pass 7 \(pid \d+\) since"
        with pytest.raises(lock.LockBusy, match=busy), lock.hold(tmp_path, holder="rbee apply", timeout=0.3):
            pass
        assert time.monotonic() - started < 2
    with lock.hold(tmp_path, holder="rbee apply", timeout=0.3) as held:
        assert held, "free again once released"
    assert lock.holder_of(tmp_path) == "someone", "a released lock names nobody"
