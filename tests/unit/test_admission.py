"""Admission and scheduling on a real event loop: exact refusals, FIFO dispatch, and counters that always
return to zero."""

from __future__ import annotations

import asyncio
import logging

import pytest

from rbee.queen.admission import Admission, Refusal, Ticket
from rbee.queen.scheduling import Ask, Policy, PolicyKind, Route
from rbee.spec.policy import PolicyError, load_user_policy


def routes(count: int, model: str = "m", hive: str = "h", slots: int = 1) -> list[Route]:
    return [Route(f"w-{i}", hive, model, f"http://127.0.0.1:{8000 + i}", slots=slots) for i in range(count)]


def settle(admission: Admission) -> None:
    assert all(route.in_flight == 0 for route in admission.in_flight())
    assert not admission.key_load
    assert all(admission.queue_depth(model) == 0 for model in admission.lanes)


async def test_least_loaded_fills_every_slot_then_queues_in_order() -> None:
    admission = Admission(max_queue=10)
    admission.sync(routes(2, slots=2))
    held = [await admission.acquire(Ask("m"), 1.0) for _ in range(4)]
    assert sorted(ticket.route.worker_id for ticket in held) == ["w-0", "w-0", "w-1", "w-1"]
    waiting = [asyncio.create_task(admission.acquire(Ask("m", key=f"k{i}"), 5.0)) for i in range(3)]
    await asyncio.sleep(0)
    assert admission.queue_depth("m") == 3
    held[2].release()
    first = await waiting[0]
    assert first.route is held[2].route and first.queued_seconds >= 0
    assert not waiting[1].done()
    for ticket in [*held[:2], held[3], first]:
        ticket.release()
    for task in waiting[1:]:
        (await task).release()
    settle(admission)


async def test_refusals_are_exact() -> None:
    admission = Admission(max_queue=1)
    admission.sync(routes(1))
    holder = await admission.acquire(Ask("m", key="a"), 1.0)
    with pytest.raises(Refusal) as key_limit:
        await admission.acquire(Ask("m", key="a"), 1.0, key_limit=1)
    assert (key_limit.value.status, key_limit.value.reason, key_limit.value.retry_after) == (429, "key_limit", 1)
    queued = asyncio.create_task(admission.acquire(Ask("m", key="b"), 0.2))
    await asyncio.sleep(0)
    with pytest.raises(Refusal) as full:
        await admission.acquire(Ask("m", key="c"), 1.0)
    assert (full.value.status, full.value.reason, full.value.retry_after) == (503, "queue_full", 1)
    with pytest.raises(Refusal) as late:
        await queued
    assert (late.value.status, late.value.reason) == (504, "deadline")
    with pytest.raises(Refusal) as none:
        await admission.acquire(Ask("other"), 1.0)
    assert (none.value.status, none.value.reason, none.value.retry_after) == (503, "no_worker", 5)
    holder.release()
    holder.release()  # twice is harmless: a ticket releases once
    settle(admission)
    assert admission.refusals == {
        ("m", "key_limit"): 1,
        ("m", "queue_full"): 1,
        ("m", "deadline"): 1,
        ("other", "no_worker"): 1,
    }


async def test_a_cancelled_waiter_leaves_the_queue_and_gives_back_its_slot() -> None:
    admission = Admission()
    admission.sync(routes(1))
    holder = await admission.acquire(Ask("m", key="a"), 1.0)
    waiter = asyncio.create_task(admission.acquire(Ask("m", key="b"), 5.0))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert admission.queue_depth("m") == 0
    # A waiter cancelled in the same step its worker was handed to it must give that worker back.
    racer = asyncio.create_task(admission.acquire(Ask("m", key="c"), 5.0))
    await asyncio.sleep(0)
    holder.release()
    racer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await racer
    settle(admission)


async def test_errors_release_through_the_ticket() -> None:
    admission = Admission()
    admission.sync(routes(1))

    async def failing_request() -> None:
        ticket: Ticket = await admission.acquire(Ask("m", key="k"), 1.0)
        try:
            raise RuntimeError("the worker broke")
        finally:
            ticket.release()

    with pytest.raises(RuntimeError):
        await failing_request()
    settle(admission)


async def test_a_worker_that_leaves_gets_no_more_work() -> None:
    admission = Admission()
    first, second = routes(2)
    admission.sync([first, second])
    a = await admission.acquire(Ask("m"), 1.0)
    b = await admission.acquire(Ask("m"), 1.0)
    waiting = asyncio.create_task(admission.acquire(Ask("m"), 5.0))
    await asyncio.sleep(0)
    gone = a.route
    admission.sync([route for route in (first, second) if route is not gone])
    a.release()
    await asyncio.sleep(0)
    assert not waiting.done(), "a worker that left is not handed to the queue"
    b.release()
    assert (await waiting).route is b.route


async def test_a_pinned_hive_is_preferred_but_not_required() -> None:
    admission = Admission()
    admission.sync([*routes(1, hive="east"), Route("w-9", "west", "m", "http://127.0.0.1:9")])
    pinned = await admission.acquire(Ask("m", hive="west"), 1.0)
    assert pinned.route.hive == "west" and "pinned hive west" in pinned.reason
    fallback = await admission.acquire(Ask("m", hive="west"), 1.0)
    assert fallback.route.hive == "east" and "has no free worker" in fallback.reason


async def test_round_robin_takes_turns() -> None:
    admission = Admission(policy=Policy(PolicyKind.ROUND_ROBIN))
    admission.sync(routes(3, slots=10))
    picks = []
    for _ in range(6):
        ticket = await admission.acquire(Ask("m"), 1.0)
        picks.append(ticket.route.worker_id)
        ticket.release()
    assert picks == ["w-0", "w-1", "w-2", "w-0", "w-1", "w-2"]


POLICY = """
def route(request, candidates):
    # prefer the worker with the highest id
    return max(candidates, key=lambda c: c["worker"])
"""


async def test_a_user_policy_chooses() -> None:
    admission = Admission(policy=Policy(PolicyKind.FILE, POLICY, "mine.py"))
    admission.sync(routes(3))
    ticket = await admission.acquire(Ask("m"), 1.0)
    assert ticket.route.worker_id == "w-2" and ticket.reason == "chosen by mine.py"


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("def route(request, candidates):\n    raise KeyError('gpu')\n", "mine.py raised KeyError"),
        ("def route(request, candidates):\n    return {'worker': 'nope'}\n", "not a candidate"),
        ("import sys\ndef route(request, candidates):\n    sys.exit(3)\n", "mine.py raised SystemExit"),
        ("def route(request, candidates):\n    while True:\n        pass\n", "route() ran longer than 10 ms"),
    ],
)
async def test_a_failing_user_policy_falls_back_with_a_warning(
    source: str, words: str, caplog: pytest.LogCaptureFixture
) -> None:
    admission = Admission(policy=Policy(PolicyKind.FILE, source, "mine.py"))
    admission.sync(routes(2))
    with caplog.at_level(logging.WARNING, logger="rbee.queen"):
        ticket = await admission.acquire(Ask("m"), 1.0)
    assert ticket.route.worker_id in ("w-0", "w-1")
    assert words in ticket.reason and "least loaded" in ticket.reason
    assert "using least-loaded" in caplog.text


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("def route(:\n", "does not load: SyntaxError"),
        ("x = 1\n", "defines no function route(request, candidates)"),
        ("def route(request):\n    return None\n", "exactly two arguments"),
    ],
)
def test_a_broken_policy_file_is_refused(source: str, words: str) -> None:
    with pytest.raises(PolicyError, match=words.replace("(", r"\(").replace(")", r"\)")):
        load_user_policy(source, "mine.py")


async def test_explain_does_not_admit() -> None:
    admission = Admission()
    admission.sync(routes(2))
    candidates, pick, reason = admission.explain(Ask("m"))
    assert len(candidates) == 2 and pick == "h/w-0" and "least loaded" in reason
    settle(admission)
    assert (await admission.acquire(Ask("m"), 1.0)).route.key == pick


async def test_a_policy_that_keeps_failing_is_disabled() -> None:
    policy = Policy(PolicyKind.FILE, "def route(request, candidates):\n    return None\n", "mine.py")
    admission = Admission(policy=policy)
    admission.sync(routes(2))
    for _ in range(25):
        (await admission.acquire(Ask("m"), 1.0)).release()
    assert policy.disabled is not None and "disabled after 20 failures in a row" in policy.disabled
    assert policy.failed_total == 20, "once disabled it is not asked again"
    ticket = await admission.acquire(Ask("m"), 1.0)
    assert "disabled" in ticket.reason and "least loaded" in ticket.reason


async def test_workers_replaced_under_the_same_keys_do_not_break_the_free_heap() -> None:
    """New Route objects for the same workers (a worker that came back on another port) start at version 0 like
    the entries still in the heap: the heap must order them without comparing two Routes (a TypeError before)."""
    admission = Admission()
    admission.sync(routes(3, slots=2))
    admission.sync(routes(3, slots=2))
    ticket = await admission.acquire(Ask("m"), 1.0)
    assert ticket.route in admission.lanes["m"].live
    ticket.release()
    settle(admission)
