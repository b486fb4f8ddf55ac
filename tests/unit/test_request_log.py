"""The queen's record of each finished request: the Prometheus counters and one request-log line, written
straight to the log's stream in the log's own line format (what `rbee logs` and the SSH test read)."""

from __future__ import annotations

import io
import json
import logging
import re
import time

import pytest

from rbee.queen import metrics
from rbee.queen.admission import Admission

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} rbee\.requests INFO (\{.*\})$")


def finished(request_id: str, status: int = 200, tokens: int = 5) -> metrics.Exchange:
    exchange = metrics.Exchange(request_id, "smollm2", "team")
    exchange.hive, exchange.worker, exchange.tokens = "local", "w-1", tokens
    exchange.first_byte = exchange.started + 0.01
    if status != 200:
        exchange.failed(status, "the worker went away")
    return exchange


def test_each_request_is_one_line_in_the_logs_format_and_counted_once() -> None:
    counted = metrics.Metrics(Admission(max_queue=10))
    counted.log_stream = io.StringIO()
    metrics.record(counted, finished("a"))
    metrics.record(counted, finished("b", status=502, tokens=0))
    reused = finished("c")
    reused.prompt_tokens, reused.cached_tokens = 40, 32  # a prompt whose beginning the worker held
    metrics.record(counted, reused)
    lines = counted.log_stream.getvalue().splitlines()
    assert len(lines) == 3
    found = [LINE.match(line) for line in lines]
    assert all(found), lines
    records = [json.loads(match.group(1)) for match in found if match]
    assert [r["id"] for r in records] == ["a", "b", "c"]
    assert records[1]["status"] == 502 and records[1]["error"] == "the worker went away"
    assert records[0]["ttft_ms"] == pytest.approx(10.0, abs=0.01)
    assert (records[2]["prompt_tokens"], records[2]["cached_tokens"]) == (40, 32)
    stamp = lines[0][:19]
    assert abs(time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) - time.time()) < 5
    exported = counted.render().decode()
    assert 'rbee_requests_total{model="smollm2",status="200"} 2.0' in exported
    assert 'rbee_requests_total{model="smollm2",status="502"} 1.0' in exported
    assert 'rbee_tokens_generated_total{model="smollm2"} 10.0' in exported
    assert 'rbee_prompt_tokens_total{model="smollm2"} 40.0' in exported
    assert 'rbee_prompt_tokens_cached_total{model="smollm2"} 32.0' in exported
    assert 'rbee_time_to_first_token_seconds_count{model="smollm2"} 3.0' in exported


def test_without_a_stream_the_line_goes_through_logging(caplog: pytest.LogCaptureFixture) -> None:
    counted = metrics.Metrics(Admission(max_queue=10))
    with caplog.at_level(logging.INFO, logger="rbee.requests"):
        metrics.record(counted, finished("x"))
    assert [json.loads(r.getMessage())["id"] for r in caplog.records if r.name == "rbee.requests"] == ["x"]
