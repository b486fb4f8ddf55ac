"""The worker's hand-off from the generation thread to the event loop: a token after a quiet spell goes out at
once, tokens that come fast leave together at the pace, and the end of a generation never waits for the pace."""

from __future__ import annotations

import asyncio
import threading

from rbee.worker.stream import Mailbox

LONG = 30.0  # a pace no test may wait out: each `take` below is bounded far below it


def run_with_producer(produce: list[tuple[tuple[str, object], bool]], pace: float, takes: int) -> list[list[object]]:
    """Start a loop, put `produce` from another thread (each after the previous take returned, in order), and
    return what each take got."""

    async def main() -> list[list[object]]:
        mailbox = Mailbox(asyncio.get_running_loop(), pace)
        got: list[list[object]] = []
        for item, final in produce[:1]:
            threading.Thread(target=mailbox.put, args=(item,), kwargs={"final": final}).start()
        got.append([value for _, value in await asyncio.wait_for(mailbox.take(), 5)])
        rest = produce[1:]

        def put_rest() -> None:
            for item, final in rest:
                mailbox.put(item, final=final)

        threading.Thread(target=put_rest).start()
        while len(got) < takes:
            got.append([value for _, value in await asyncio.wait_for(mailbox.take(), 5)])
        return got

    return asyncio.run(main())


def test_the_first_token_is_not_held_for_the_pace() -> None:
    assert run_with_producer([(("piece", "a"), False)], LONG, 1) == [["a"]]


def test_tokens_within_the_pace_leave_together_with_the_end_which_does_not_wait() -> None:
    items = [(("piece", "a"), False), (("piece", "b"), False), (("piece", "c"), False), (("done", None), True)]
    assert run_with_producer(items, LONG, 2) == [["a"], ["b", "c", None]]


def test_a_token_after_the_pace_has_passed_goes_out_without_an_end() -> None:
    async def main() -> list[list[object]]:
        mailbox = Mailbox(asyncio.get_running_loop(), 0.05)
        got = []
        for piece in ("a", "b"):
            threading.Thread(target=mailbox.put, args=(("piece", piece),)).start()
            got.append([value for _, value in await asyncio.wait_for(mailbox.take(), 5)])
            await asyncio.sleep(0.1)  # a quiet spell longer than the pace: the loop is asleep again
        return got

    assert asyncio.run(main()) == [["a"], ["b"]]


def test_once_tokens_come_slower_than_the_pace_the_loop_sleeps_until_the_next_one() -> None:
    """No timer wakes the loop between slow tokens: after taking one, the mailbox is asleep, so the next put
    wakes it at once. While tokens come fast it stays awake, and the producer never signals."""

    async def main() -> list[tuple[list[object], bool]]:
        mailbox = Mailbox(asyncio.get_running_loop(), 0.5)
        got = []
        for piece, quiet in (("a", 0.7), ("b", 0.0), ("c", 0.0)):
            threading.Timer(0.05, mailbox.put, args=(("piece", piece),)).start()  # while the loop waits
            got.append(([value for _, value in await asyncio.wait_for(mailbox.take(), 5)], mailbox.asleep))
            await asyncio.sleep(quiet)
        return got

    # "a" is the first batch (paced); "b" came after a quiet spell longer than the pace; "c" right after "b"
    assert asyncio.run(main()) == [(["a"], False), (["b"], True), (["c"], False)]
