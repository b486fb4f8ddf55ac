"""Prefix routing (the default policy): requests that begin alike go to one replica while it has room, different
beginnings spread over the replicas, a replica past its bounded load passes requests to the next in the order,
and removing a replica moves only the prefixes it held."""

from __future__ import annotations

from rbee.queen.admission import Admission
from rbee.queen.scheduling import PREFIX_CHARS, Ask, Route, prefix_of
from tests.unit.test_admission import routes, settle

SYSTEM = "You are the help desk of a bicycle shop. Answer in two sentences. " * 10


def ask(question: str) -> Ask:
    texts = [SYSTEM, question]
    return Ask("m", prompt_chars=sum(map(len, texts)), prefix=prefix_of(texts))


async def test_requests_sharing_a_prefix_go_to_one_replica_while_it_has_room() -> None:
    admission = Admission()
    admission.sync(routes(3, slots=4))
    held = [await admission.acquire(ask(f"question {i}"), 1.0) for i in range(2)]
    assert len({ticket.route.key for ticket in held}) == 1, [ticket.reason for ticket in held]
    assert held[0].reason.startswith("prefix ") and "replica 1 of its order" in held[0].reason
    for ticket in held:
        ticket.release()
    settle(admission)


async def test_different_prefixes_spread_over_the_replicas() -> None:
    admission = Admission()
    admission.sync(routes(3, slots=4))
    picked = set()
    for i in range(30):
        ticket = await admission.acquire(Ask("m", prefix=prefix_of([f"conversation {i}: hello"])), 1.0)
        picked.add(ticket.route.key)
        ticket.release()
    assert picked == {"h/w-0", "h/w-1", "h/w-2"}
    settle(admission)


async def test_a_replica_past_its_bounded_load_passes_the_prefix_on() -> None:
    """With 3 replicas of 4 slots, a hot prefix fills its replica to half its slots, then only while that stays
    within 1.25x the mean load; the next replica in its order takes the rest, so one system prompt cannot pile
    every request onto one worker."""
    admission = Admission()
    admission.sync(routes(3, slots=4))
    held = [await admission.acquire(ask(f"q{i}"), 1.0) for i in range(6)]
    per_replica: dict[str, int] = {}
    for ticket in held:
        per_replica[ticket.route.key] = per_replica.get(ticket.route.key, 0) + 1
    assert len(per_replica) >= 2 and max(per_replica.values()) <= 3, per_replica
    assert any("replica 2 of its order" in ticket.reason for ticket in held)
    for ticket in held:
        ticket.release()
    settle(admission)


async def test_removing_a_replica_moves_only_the_prefixes_it_held() -> None:
    admission = Admission()
    three = routes(3, slots=4)
    admission.sync(three)
    prefixes = [prefix_of([f"user {i} says hi"]) for i in range(60)]

    async def owners() -> dict[str, str]:
        found = {}
        for prefix in prefixes:
            ticket = await admission.acquire(Ask("m", prefix=prefix), 1.0)
            found[prefix] = ticket.route.key
            ticket.release()
        return found

    before = await owners()
    admission.sync([route for route in three if route.worker_id != "w-2"])
    after = await owners()
    moved = [prefix for prefix in prefixes if before[prefix] != after[prefix]]
    assert moved and all(before[prefix] == "h/w-2" for prefix in moved)
    settle(admission)


def test_only_the_beginning_counts() -> None:
    long = "x" * (PREFIX_CHARS + 100)
    assert prefix_of([long + "a"]) == prefix_of([long + "b"])
    assert prefix_of(["short", "a"]) != prefix_of(["short", "b"])
    assert len(prefix_of(["y" * 400, "z" * 400])) <= PREFIX_CHARS + 1


async def test_one_replica_or_no_text_is_least_loaded() -> None:
    admission = Admission()
    admission.sync([Route("w-0", "h", "m", "http://127.0.0.1:8000", slots=2)])
    assert "least loaded" in (await admission.acquire(ask("q"), 1.0)).reason
    admission = Admission()
    admission.sync(routes(2))
    assert "least loaded" in (await admission.acquire(Ask("m"), 1.0)).reason


async def test_a_pinned_hive_gets_its_own_replicas_first_and_a_prefix_keeps_its_replica_there() -> None:
    admission = Admission()
    fleet = [Route(f"w-{i}", f"h-{i % 3}", "m", f"http://127.0.0.1:{9000 + i}", slots=4) for i in range(9)]
    admission.sync(fleet)
    pinned = Ask("m", hive="h-1", prefix=prefix_of(["the same system prompt"]))
    held = [await admission.acquire(pinned, 1.0) for _ in range(2)]
    assert {ticket.route.hive for ticket in held} == {"h-1"} and len({t.route.key for t in held}) == 1
    for ticket in held:
        ticket.release()
    settle(admission)


async def test_the_ring_is_built_once_per_set_of_replicas() -> None:
    """A decision costs one hash and a bisection: the ring is made again only when the replicas change."""
    admission = Admission()
    admission.sync(routes(5, slots=4))
    for i in range(3):
        (await admission.acquire(ask(f"q{i}"), 1.0)).release()
    ring = admission.policy._rings[("m", None)]
    (await admission.acquire(ask("again"), 1.0)).release()
    assert admission.policy._rings[("m", None)] is ring
    admission.sync(routes(4, slots=4))
    (await admission.acquire(ask("after a replica left"), 1.0)).release()
    assert admission.policy._rings[("m", None)] is not ring
    settle(admission)


async def test_the_free_heap_stays_bounded_under_prefix_routing() -> None:
    """Every admission and release pushes onto the least-loaded heap and prefix decisions never pop it: without a
    sweep of its stale entries it grew by two a request for the queen's life. Least-loaded still picks right after
    many sweeps."""
    admission = Admission()
    admission.sync(routes(5, slots=4))
    for i in range(5000):
        ticket = await admission.acquire(ask(f"question {i}"), 1.0)
        ticket.release()
    heap = admission.lanes["m"].free.heap
    assert len(heap) <= 2 * 5 + 64 + 1, len(heap)
    held = [await admission.acquire(Ask("m"), 1.0) for _ in range(20)]  # no prefix: least loaded, every slot
    assert sorted(ticket.route.in_flight for ticket in held[-5:]) == [4] * 5
    assert sorted({ticket.route.worker_id for ticket in held}) == [f"w-{i}" for i in range(5)]
    for ticket in held:
        ticket.release()
    settle(admission)
