"""The last minutes of traffic, kept in memory for the web UI's charts and the fleet's tokens/s: what Prometheus
would say over a range, without needing one. Bounded in time (WINDOW) and in size (MAX_RECORDS); nothing here is
persisted, a restarted queen starts with an empty window.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

WINDOW = 600.0
"""Seconds of history kept: the charts show the last ten minutes."""
MAX_RECORDS = 100_000
"""At most this many finished requests are held, whatever the rate (a few MB)."""
BUCKET = 10.0
"""Seconds per point of a chart."""
RATE_WINDOW = 60.0
"""A worker's tokens/s is its tokens over the last minute."""


@dataclass(frozen=True, slots=True)
class Finished:
    at: float
    """time.time() when it finished."""
    model: str
    worker: str | None
    """`hive/worker`, as routes are named; None when it never reached one."""
    status: int
    tokens: int
    ttft: float | None
    token_latency: float | None


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Traffic:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._records: deque[Finished] = deque(maxlen=MAX_RECORDS)
        self._queues: deque[tuple[float, dict[str, int]]] = deque(maxlen=int(WINDOW) * 2)
        """Queue depths per model, sampled once a second (only while some queue is not empty)."""
        self._clock = clock

    def sample_queues(self, depths: dict[str, int]) -> None:
        if any(depths.values()):
            self._queues.append((self._clock(), depths))

    def add(self, finished: Finished) -> None:
        self._records.append(finished)
        self._expire(finished.at)

    def _expire(self, now: float) -> None:
        while self._records and self._records[0].at < now - WINDOW:
            self._records.popleft()

    def worker_rates(self) -> dict[str, float]:
        """Tokens/s of each worker that served anything in the last RATE_WINDOW seconds."""
        since = self._clock() - RATE_WINDOW
        tokens: dict[str, int] = {}
        for record in reversed(self._records):
            if record.at < since:
                break
            if record.worker is not None:
                tokens[record.worker] = tokens.get(record.worker, 0) + record.tokens
        return {worker: round(count / RATE_WINDOW, 2) for worker, count in tokens.items()}

    def series(self) -> dict[str, list[dict[str, float | int | None]]]:
        """Per model, one point per BUCKET seconds over the window, oldest first: requests/s, refusals (429 and
        503: full queues, nothing to serve on), cancels (499: the client went away), errors (other failures),
        TTFT and inter-token latency percentiles in milliseconds, and the deepest its queue was."""
        now = self._clock()
        self._expire(now)
        points = int(WINDOW // BUCKET)
        start = now - points * BUCKET
        grouped: dict[str, list[list[Finished]]] = {}
        for record in self._records:
            index = int((record.at - start) // BUCKET)
            if 0 <= index < points:
                grouped.setdefault(record.model, [[] for _ in range(points)])[index].append(record)
        deepest: dict[str, list[int]] = {}
        for at, depths in self._queues:
            index = int((at - start) // BUCKET)
            if 0 <= index < points:
                for model, depth in depths.items():
                    column = deepest.setdefault(model, [0] * points)
                    column[index] = max(column[index], depth)
        series: dict[str, list[dict[str, float | int | None]]] = {}
        for model in grouped.keys() | deepest.keys():
            buckets = grouped.get(model) or [[] for _ in range(points)]
            queued = deepest.get(model) or [0] * points
            series[model] = [{**_point(start + i * BUCKET, buckets[i]), "queued_max": queued[i]} for i in range(points)]
        return series


def _point(at: float, records: list[Finished]) -> dict[str, float | int | None]:
    ttft = [r.ttft * 1000 for r in records if r.ttft is not None]
    itl = [r.token_latency * 1000 for r in records if r.token_latency is not None]

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 2)

    return {
        "at": round(at, 3),
        "requests_per_s": round(len(records) / BUCKET, 3),
        "tokens_per_s": round(sum(r.tokens for r in records) / BUCKET, 2),
        "refused": sum(1 for r in records if r.status in (429, 503)),
        "errors": sum(1 for r in records if r.status >= 400 and r.status not in (429, 499, 503)),
        "cancelled": sum(1 for r in records if r.status == 499),
        "ttft_p50_ms": rounded(_percentile(ttft, 0.5)),
        "ttft_p95_ms": rounded(_percentile(ttft, 0.95)),
        "itl_p50_ms": rounded(_percentile(itl, 0.5)),
        "itl_p95_ms": rounded(_percentile(itl, 0.95)),
    }
