"""Prometheus metrics for the queen, on their own registry (one per queen, so tests can run several).

Queue depth and in-flight counts are read from the admission state at scrape time: nothing on the request path
pays for them.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from rbee.queen.admission import Admission

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


class Metrics:
    def __init__(self, admission: Admission) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "rbee_requests", "Requests by model and HTTP status.", ["model", "status"], registry=self.registry
        )
        self.tokens = Counter("rbee_tokens_generated", "Tokens generated, by model.", ["model"], registry=self.registry)
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
