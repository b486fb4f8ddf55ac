"""The queen's window of recent traffic: points per 10 s per model, percentiles, refusals apart from errors,
tokens/s per worker over the last minute, and nothing older than the window."""

from __future__ import annotations

from rbee.queen.traffic import BUCKET, MAX_RECORDS, WINDOW, Finished, Traffic


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def finished(
    at: float, status: int = 200, tokens: int = 10, ttft: float | None = 0.1, worker: str = "a/w-1"
) -> Finished:
    return Finished(at, "chat", worker, status, tokens, ttft, 0.02 if tokens > 1 else None)


def test_points_cover_the_window_and_count_each_bucket() -> None:
    clock = Clock(10_000.0)
    traffic = Traffic(clock)
    for offset in (1, 2, 3):
        traffic.add(finished(clock.now - offset, ttft=offset / 10))
    traffic.add(finished(clock.now - 2, status=429, tokens=0, ttft=None))
    traffic.add(finished(clock.now - 2, status=502, tokens=0, ttft=None))
    traffic.add(finished(clock.now - 2, status=499, tokens=0, ttft=None))
    points = traffic.series()["chat"]
    assert len(points) == int(WINDOW // BUCKET)
    last = points[-1]
    assert last["requests_per_s"] == 6 / BUCKET and last["tokens_per_s"] == 30 / BUCKET
    assert (last["refused"], last["errors"], last["cancelled"]) == (1, 1, 1)
    assert last["ttft_p50_ms"] == 200.0 and last["ttft_p95_ms"] == 300.0
    assert all(point["requests_per_s"] == 0 and point["ttft_p50_ms"] is None for point in points[:-1])


def test_old_requests_leave_the_window() -> None:
    clock = Clock(10_000.0)
    traffic = Traffic(clock)
    traffic.add(finished(clock.now - 5))
    clock.now += WINDOW + 10
    assert traffic.series() == {}


def test_a_workers_rate_is_its_tokens_over_the_last_minute() -> None:
    clock = Clock(10_000.0)
    traffic = Traffic(clock)
    traffic.add(finished(clock.now - 120, tokens=600))  # too old for the rate, still in the charts
    traffic.add(finished(clock.now - 30, tokens=120))
    traffic.add(finished(clock.now - 10, tokens=60, worker="b/w-1"))
    assert traffic.worker_rates() == {"a/w-1": 2.0, "b/w-1": 1.0}


def test_the_window_holds_a_bounded_number_of_requests() -> None:
    clock = Clock(10_000.0)
    traffic = Traffic(clock)
    for _ in range(MAX_RECORDS + 10):
        traffic.add(finished(clock.now))
    assert len(traffic._records) == MAX_RECORDS


def test_the_deepest_queue_of_each_bucket_is_kept() -> None:
    clock = Clock(10_000.0)
    traffic = Traffic(clock)
    traffic.sample_queues({"chat": 0})  # nothing queued: nothing kept
    assert traffic.series() == {}
    for depth in (3, 7, 2):
        clock.now += 1
        traffic.sample_queues({"chat": depth})
    clock.now += 1
    points = traffic.series()["chat"]
    assert points[-1]["queued_max"] == 7 and points[-1]["requests_per_s"] == 0
    assert all(point["queued_max"] == 0 for point in points[:-1])
