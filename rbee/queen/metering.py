"""Metering: one usage record per request, served here or by a provider (which provider, which model, the tokens
in and out, what it cost at that provider's prices, the margin it is billed at, the customer's key name: never
the key), kept in the queen's store and counted in /metrics. A customer key's bill and a provider's payout are
both sums of the same records (store.usage).

Records are buffered and written once a second in one transaction: a SQLite write per request would cost the
relay more than the request itself (bench/relay.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from rbee.queen.store import Store
from rbee.spec.providers import Pricing

log = logging.getLogger("rbee.queen")
FLUSH_EVERY = 1.0


@dataclass(frozen=True, slots=True)
class Usage:
    at: float
    key: str | None
    provider: str
    """A provider's name, or `local` (this fleet's own workers)."""
    model: str
    input_tokens: int
    output_tokens: int
    cost: float
    margin: float
    status: int


class Meter:
    def __init__(self, store: Store, registry: CollectorRegistry | None = None) -> None:
        self.store = store
        self.pending: list[tuple[object, ...]] = []
        labels = ("provider", "model", "key")
        self.tokens = Counter(
            "rbee_usage_tokens",
            "Tokens metered, by provider, model, key and direction",
            (*labels, "direction"),
            registry=registry,
        )
        self.cost = Counter(
            "rbee_usage_cost", "What requests cost at their providers' prices", labels, registry=registry
        )
        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}

    def _one(self, metric: Counter, *values: str) -> Any:
        """`metric.labels(*values)`, looked up once (labels() locks and checks on every call)."""
        child = self._children.get((metric, values))
        if child is None:
            child = self._children[(metric, values)] = metric.labels(*values)
        return child

    def add(
        self,
        key: str | None,
        provider: str,
        model: str,
        tokens: tuple[int, int],
        pricing: Pricing,
        margin: float,
        status: int,
    ) -> Usage:
        """Record one request's usage (`tokens`: in, out); written at the next flush."""
        cost = pricing.cost(*tokens)
        usage = Usage(time.time(), key, provider, model, tokens[0], tokens[1], cost, margin, status)
        self.pending.append((usage.at, key, provider, model, tokens[0], tokens[1], cost, margin, status))
        who = key or ""
        if tokens[0]:
            self._one(self.tokens, provider, model, who, "input").inc(tokens[0])
        if tokens[1]:
            self._one(self.tokens, provider, model, who, "output").inc(tokens[1])
        if cost:
            self._one(self.cost, provider, model, who).inc(cost)
        return usage

    def flush(self) -> None:
        rows, self.pending = self.pending, []
        try:
            self.store.add_usage(rows)
        except Exception:
            log.exception("writing %d usage records failed; they are kept for the next try", len(rows))
            self.pending[:0] = rows

    async def run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            if self.pending:
                self.flush()
