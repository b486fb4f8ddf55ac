"""The task store's bounds: finished tasks leave whatever still runs before them; a running one never does."""

from __future__ import annotations

from rbee.api import wire
from rbee.queen.tasks import Task, TaskStore


def test_one_long_task_does_not_keep_every_later_one() -> None:
    store = TaskStore(limit=1000)
    long = Task("task-long", "m")
    store.add(long)
    for number in range(2000):
        short = Task(f"task-{number}", "m")
        store.add(short)
        short.add(wire.done_event(1, 1, wire.FinishReason.STOP), final=True)
    assert len(store.tasks) <= 1000
    assert store.get("task-long") is long, "still running: never evicted"
    assert store.get("task-1999") is not None and store.get("task-0") is None, "the oldest finished went first"


def test_the_store_is_bounded_in_bytes_and_time() -> None:
    store = TaskStore(max_bytes=10_000, keep=0.0)
    big = Task("task-big", "m")
    store.add(big)
    big.add(b"x" * 20_000, final=True)
    store.add(Task("task-next", "m"))
    assert store.get("task-big") is None and store.get("task-next") is not None
