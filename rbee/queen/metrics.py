"""What the queen counts about requests: each one's record (`Exchange`), written once when it ends to the
Prometheus metrics and as one JSON line of the request log.

The metrics live on their own registry (one per queen, so tests can run several). Queue depth and in-flight
counts are read from the admission state at scrape time: nothing on the request path pays for them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from rbee.queen.admission import Admission
from rbee.queen.traffic import Finished, Traffic

request_log = logging.getLogger("rbee.requests")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)


class _Live(Collector):
    def __init__(self, admission: Admission) -> None:
        self.admission = admission

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("rbee_queue_depth", "Requests waiting for a worker, per model.", labels=["model"])
        for model in self.admission.lanes:
            depth.add_metric([model], self.admission.queue_depth(model))
        yield depth
        in_flight = GaugeMetricFamily(
            "rbee_worker_in_flight", "Requests a worker is serving.", labels=["hive", "worker", "model"]
        )
        for route in self.admission.in_flight():
            in_flight.add_metric([route.hive, route.worker_id, route.model], route.in_flight)
        yield in_flight
        refusals = GaugeMetricFamily(
            "rbee_admission_refusals", "Requests refused by admission, by reason.", labels=["model", "reason"]
        )
        for (model, reason), count in self.admission.refusals.items():
            refusals.add_metric([model, reason], count)
        yield refusals
        policy = self.admission.policy
        failures = GaugeMetricFamily(
            "rbee_routing_policy_failures",
            "Calls of the routing policy file's route() that raised, overran or picked no candidate.",
            labels=["policy"],
        )
        failures.add_metric([policy.name], policy.failed_total)
        yield failures


class Metrics:
    def __init__(self, admission: Admission) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "rbee_requests", "Requests by model and HTTP status.", ["model", "status"], registry=self.registry
        )
        self.tokens = Counter("rbee_tokens_generated", "Tokens generated, by model.", ["model"], registry=self.registry)
        self.prompt_tokens = Counter(
            "rbee_prompt_tokens", "Prompt tokens read, by model.", ["model"], registry=self.registry
        )
        self.cached_tokens = Counter(
            "rbee_prompt_tokens_cached",
            "Of the prompt tokens, those a worker found in its prefix cache and did not evaluate again, by model.",
            ["model"],
            registry=self.registry,
        )
        self.ttft = Histogram(
            "rbee_time_to_first_token_seconds",
            "From arrival to the first token.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.token_latency = Histogram(
            "rbee_token_latency_seconds",
            "Mean time between tokens of a request.",
            ["model"],
            buckets=TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_Live(admission))
        self.traffic = Traffic()
        self.log_stream: TextIO | None = None
        """Where the request log's lines go straight, in the log's own line format, when the queen's log is a
        stream (the daemon's stderr): logging's per-record machinery cost half of what counting a request costs.
        None: through logging (a queen inside a test)."""
        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}
        self._second = (0, "")

    def one(self, metric: Counter | Histogram, *values: str) -> Any:
        """`metric.labels(*values)`, looked up once: labels() locks and checks on every call."""
        child = self._children.get((metric, values))
        if child is None:
            child = self._children[(metric, values)] = metric.labels(*values)
        return child

    def log(self, line: str) -> None:
        """One line of the request log."""
        if self.log_stream is None:
            request_log.info(line)
            return
        now = time.time()
        second = int(now)
        if second != self._second[0]:
            self._second = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        self.log_stream.write(f"{self._second[1]},{int(now * 1000) % 1000:03d} rbee.requests INFO {line}\n")

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass
class Exchange:
    """One request's record: what the request log line and the metrics say about it."""

    id: str
    model: str
    key: str | None
    started: float = field(default_factory=time.monotonic)
    first_byte: float | None = None
    worker: str | None = None
    hive: str | None = None
    queued: float = 0.0
    status: int = 200
    tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    """Of the prompt's tokens, those its worker found cached (its end comment says)."""
    error: str | None = None

    def failed(self, status: int, error: str) -> None:
        self.status, self.error = status, error


def record(metrics: Metrics, exchange: Exchange) -> None:
    """Count a finished request and write its log line."""
    now = time.monotonic()
    model = exchange.model
    metrics.one(metrics.requests, model, str(exchange.status)).inc()
    if exchange.tokens:
        metrics.one(metrics.tokens, model).inc(exchange.tokens)
    if exchange.prompt_tokens:
        metrics.one(metrics.prompt_tokens, model).inc(exchange.prompt_tokens)
    if exchange.cached_tokens:
        metrics.one(metrics.cached_tokens, model).inc(exchange.cached_tokens)
    first = exchange.first_byte - exchange.started if exchange.first_byte is not None else None
    between = (
        (now - exchange.first_byte) / (exchange.tokens - 1) if exchange.first_byte and exchange.tokens > 1 else None
    )
    if first is not None:
        metrics.one(metrics.ttft, model).observe(first)
    if between is not None:
        metrics.one(metrics.token_latency, model).observe(between)
    ttft = round(first * 1000, 2) if first is not None else None
    worker = f"{exchange.hive}/{exchange.worker}" if exchange.worker else None
    metrics.traffic.add(Finished(time.time(), model, worker, exchange.status, exchange.tokens, first, between))
    metrics.log(
        json.dumps(
            {
                "id": exchange.id,
                "model": model,
                "key": exchange.key,
                "hive": exchange.hive,
                "worker": exchange.worker,
                "status": exchange.status,
                "tokens": exchange.tokens,
                "prompt_tokens": exchange.prompt_tokens,
                "cached_tokens": exchange.cached_tokens,
                "queued_ms": round(exchange.queued * 1000, 2),
                "ttft_ms": ttft,
                "duration_ms": round((now - exchange.started) * 1000, 2),
                "error": exchange.error,
            }
        )
    )
