"""The queen's store on a real PostgreSQL server (started here) and on SQLite, the same tests for both: specs
and their generations, the event log, usage sums, registered providers, and the lease that picks the queen that
reconciles (taken, renewed, refused to another holder, taken over with a higher generation once it expires)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rbee.queen.database import StoreError
from rbee.queen.store import Store
from rbee.spec import load
from tests import postgres

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server() -> Iterator[postgres.PostgresServer | None]:
    if postgres.missing() is not None:
        yield None
        return
    with postgres.running() as running:
        yield running


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path, server: postgres.PostgresServer | None) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "queen.db")
    if server is None:
        pytest.skip(str(postgres.missing()))
    return server.database(f"store_{time.monotonic_ns()}")


def test_specs_events_and_usage(location: str) -> None:
    store = Store(location)
    assert store.current_spec() is None and store.current_generation() == 0
    spec = load.loads("hives: [{name: box}]\n")
    assert store.apply_spec(spec, "a.yaml") == (1, True)
    assert store.apply_spec(spec, "a.yaml") == (1, False), "the same spec again changes nothing"
    assert store.apply_spec(load.loads("hives: [{name: other}]\n"), "b.yaml") == (2, True)
    assert store.current_generation() == 2 and store.current_spec()[1].hives[0].name == "other"  # type: ignore[index]
    for number in range(30):
        store.log("apply", "box", str(number))
    assert [event["message"] for event in store.events(2, after=2)] == ["0", "1"]
    store.prune_events(keep=5)
    assert len(store.events(100)) == 5
    store.add_usage(
        [
            (time.time(), "admin", "local", "m", 10, 5, 0.0, 0.0, 200),
            (time.time(), "admin", "lab", "m", 20, 7, 0.5, 0.35, 200),
            (time.time(), None, "lab", "m", 1, 0, 0.1, 0.35, 502),
        ]
    )
    by_provider = {row["name"]: row for row in store.usage(0, "provider")}
    assert by_provider["lab"]["requests"] == 2 and by_provider["lab"]["failed"] == 1
    assert by_provider["lab"]["input_tokens"] == 21 and by_provider["lab"]["billed"] == pytest.approx(0.6 * 1.35)
    assert {row["name"] for row in store.usage(0, "key")} == {"", "admin"}
    store.register_provider("lab", '{"name":"lab","endpoint":"http://x/v1"}', "k")
    store.register_provider("lab", '{"name":"lab","endpoint":"http://y/v1"}', None)
    assert store.registered_providers() == [('{"name":"lab","endpoint":"http://y/v1"}', None)]
    assert store.remove_provider("lab") and not store.remove_provider("lab")
    assert not store.suspended
    store.set_suspended(True)
    assert Store(location).suspended, "kept: a restarted queen stays suspended"
    store.set_suspended(False)
    assert not store.suspended
    store.saw_hive("box")
    store.saw_hive("box")
    assert store.seen_hives() == {"box"}
    store.replace_workers([("box", "w-1", "m", "http://127.0.0.1:1")])
    assert store.workers() == [("box", "w-1", "m", "http://127.0.0.1:1")]
    store.close()


def test_the_lease(location: str) -> None:
    first, second = Store(location), Store(location)
    assert first.hold_lease("queen-a", 0.5) == 1
    assert first.hold_lease("queen-a", 0.5) == 1, "a renewal keeps the generation"
    assert second.hold_lease("queen-b", 0.5) is None, "held by another"
    holder = second.lease()
    assert holder is not None and holder[:2] == ("queen-a", 1) and 0 < holder[2] <= 0.5
    time.sleep(0.7)
    assert second.hold_lease("queen-b", 5) == 2, "expired: taken over, one generation up"
    assert first.hold_lease("queen-a", 5) is None
    second.release_lease("queen-b")
    assert first.hold_lease("queen-a", 5) == 3, "released: taken at once"
    second.ask_wake("m")
    second.ask_wake("m")
    second.ask_wake("n")
    assert first.take_wakes() == ["m", "n"] and first.take_wakes() == []
    first.close()
    second.close()


def test_a_store_that_cannot_be_reached_or_holds_a_password_is_one_sentence(
    server: postgres.PostgresServer | None,
) -> None:
    with pytest.raises(StoreError, match="pgpass"):
        Store("postgresql://rbee:secret@127.0.0.1:5/x")
    with pytest.raises(StoreError) as refused:
        Store("postgresql://rbee@127.0.0.1:9/nothing")
    assert "cannot reach the queen's store postgresql://rbee@127.0.0.1:9/nothing" in str(refused.value)
