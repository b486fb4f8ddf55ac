"""Federation end to end: three provider queens on loopback (real `rbee queen serve` processes, each with a
synthetic fleet of its own) and a platform queen that has them as providers. Price and region choose the
provider; a provider killed before its first byte is failed over, one killed after it ends its stream with an
error (never a silent switch); an unhealthy provider is probed and recovers by itself; usage records sum to what
the providers themselves record; providers register themselves with the registration key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.federation import RunningQueen, as_provider, start_queen

pytestmark = pytest.mark.slow
FAST = {"probe_interval": "1s", "unhealthy_after": 2, "retry_budget": "5s", "margin": 0.35}
BODY = {"model": "synthetic", "prompt": "say: hi", "max_tokens": 5}


@pytest.fixture(scope="module")
def providers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RunningQueen]]:
    root = tmp_path_factory.mktemp("providers")
    started: dict[str, RunningQueen] = {}
    try:
        for name in ("alpha", "beta", "gamma"):
            started[name] = start_queen(root, name, rate=200.0)
        yield started
    finally:
        for queen in started.values():
            queen.stop()


def entries(providers: dict[str, RunningQueen]) -> list[dict[str, Any]]:
    return [
        as_provider(providers["alpha"], "KEY_ALPHA", pricing={"input": 0.1, "output": 0.2}, region="eu", country="DE"),
        as_provider(providers["beta"], "KEY_BETA", pricing={"input": 0.5, "output": 0.5}, region="us", country="US"),
        as_provider(providers["gamma"], "KEY_GAMMA", pricing={"input": 0.2, "output": 0.3}, region="eu", country="FR"),
    ]


@pytest.fixture
def platform(tmp_path: Path, providers: dict[str, RunningQueen]) -> Iterator[RunningQueen]:
    queen = start_queen(tmp_path, "platform", replicas=0, providers=entries(providers), queen={"federation": FAST})
    try:
        wait_for(lambda: len(listed(queen)) == 3 and all(p["models"] for p in listed(queen)), "providers probed")
        yield queen
    finally:
        queen.stop()


def listed(queen: RunningQueen) -> list[dict[str, Any]]:
    providers: list[dict[str, Any]] = httpx.get(
        f"{queen.url}/v2/platform/providers", headers=queen.operator, timeout=5
    ).json()["providers"]
    return providers


def wait_for(check: Any, what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {seconds} s"
        time.sleep(0.1)


def ask(queen: RunningQueen, **headers: str) -> httpx.Response:
    sent = {name.replace("_", "-"): value for name, value in headers.items()}
    return httpx.post(f"{queen.url}/v1/completions", json=BODY, headers={**queen.keyed, **sent}, timeout=30)


def test_price_and_region_choose_the_provider(platform: RunningQueen) -> None:
    assert ask(platform).headers["x-rbee-provider"] == "alpha", "the cheapest"
    assert ask(platform, X_Rbee_Region="us").headers["x-rbee-provider"] == "beta"
    assert ask(platform, X_Rbee_Region="FR").headers["x-rbee-provider"] == "gamma", "a country is a region too"
    assert ask(platform, X_Rbee_Max_Price="0.25", X_Rbee_Region="eu").headers["x-rbee-provider"] == "alpha"
    refused = ask(platform, X_Rbee_Max_Price="0.25", X_Rbee_Region="us")
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "no_provider"
    assert "beta costs 0.5 per 1k tokens, over the 0.25 asked" in refused.json()["error"]["message"]
    assert "alpha is in eu, not in us" in refused.json()["error"]["message"]
    bad = ask(platform, X_Rbee_Prefer="soonest")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "X-Rbee-Prefer"
    with openai.OpenAI(base_url=f"{platform.url}/v1", api_key=platform.key, max_retries=0) as client:
        chunks = list(
            client.chat.completions.create(
                model="synthetic", messages=[{"role": "user", "content": "say: yo"}], max_tokens=4, stream=True
            )
        )
        answer = client.chat.completions.create(
            model="synthetic", messages=[{"role": "user", "content": "say: yo"}], max_tokens=4
        )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == " tok tok tok tok"
    assert answer.choices[0].message.content == " tok tok tok tok" and answer.usage is not None
    models = httpx.get(f"{platform.url}/v1/models", headers=platform.keyed).json()["data"]
    assert [model["id"] for model in models] == ["synthetic"], "a model only providers serve is listed"


def test_prefer_fastest_follows_measured_time_to_first_token(platform: RunningQueen) -> None:
    for region in ("DE", "US", "FR"):  # each measured once
        assert ask(platform, X_Rbee_Region=region).status_code == 200
    measured = {provider["name"]: provider["ttft_ms"]["synthetic"] for provider in listed(platform)}
    answered = ask(platform, X_Rbee_Prefer="fastest").headers["x-rbee-provider"]
    # the listing rounds to 0.1 ms, and three alike providers can tie there: any of the fastest listed will do
    assert measured[answered] == min(measured.values()), (answered, measured)
    explained = subprocess.run(
        [sys.executable, "-m", "rbee", "route", "-m", "synthetic", "--prefer", "cheapest", "--region", "eu"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "RBEE_HOME": str(platform.home.root), "NO_COLOR": "1"},
    )
    assert explained.returncode == 0, explained.stderr
    lines = explained.stdout.splitlines()
    tries = [line.split()[1] for line in lines if line.strip()[:1].isdigit() and len(line.split()) > 2]
    assert tries == ["alpha", "gamma"], explained.stdout
    assert "left out: beta is in us, not in eu" in explained.stdout


def test_local_workers_first_then_spill_over(tmp_path: Path, providers: dict[str, RunningQueen]) -> None:
    queen = start_queen(
        tmp_path, "spill", replicas=1, slots=1, rate=20.0, providers=entries(providers), queen={"federation": FAST}
    )
    try:
        wait_for(lambda: all(p["models"] for p in listed(queen)), "providers probed")
        first = ask(queen)
        assert first.status_code == 200 and "x-rbee-provider" not in first.headers, "this fleet's own worker"
        long = {**BODY, "max_tokens": 60, "stream": True}
        with httpx.stream("POST", f"{queen.url}/v1/completions", json=long, headers=queen.keyed, timeout=30) as busy:
            assert busy.status_code == 200 and "x-rbee-provider" not in busy.headers
            chunks = busy.iter_raw()  # kept: a dropped iterator closes the response
            next(chunks)  # the one local slot is taken now
            spilled = ask(queen)
            assert spilled.status_code == 200 and spilled.headers["x-rbee-provider"] == "alpha"
            still_spilled = ask(queen, X_Rbee_Prefer="local")
            assert still_spilled.headers["x-rbee-provider"] == "alpha", "local first only while a worker is free"
    finally:
        queen.stop()


def test_failover_before_the_first_byte_and_recovery(
    platform: RunningQueen, providers: dict[str, RunningQueen]
) -> None:
    alpha = providers["alpha"]
    assert ask(platform).headers["x-rbee-provider"] == "alpha"
    alpha.kill()
    try:
        started = time.monotonic()
        moved = ask(platform)
        took = time.monotonic() - started
        assert moved.status_code == 200 and moved.headers["x-rbee-provider"] == "gamma", "the next cheapest"
        assert took < 5, f"failing over took {took:.1f} s, past the retry budget"
        ask(platform)  # alpha fails twice in a row: unhealthy
        wait_for(lambda: not next(p for p in listed(platform) if p["name"] == "alpha")["healthy"], "alpha unhealthy")
        condition = next(p for p in listed(platform) if p["name"] == "alpha")["condition"]
        assert condition["type"] == "Unhealthy" and "alpha" in condition["reason"]
        assert ask(platform).headers["x-rbee-provider"] == "gamma", "an unhealthy provider is not tried"
    finally:
        alpha.start()
    wait_for(lambda: next(p for p in listed(platform) if p["name"] == "alpha")["healthy"], "alpha probed healthy")
    assert ask(platform).headers["x-rbee-provider"] == "alpha", "recovered by itself"


def test_a_provider_lost_after_its_first_byte_ends_the_stream_with_an_error(
    platform: RunningQueen, providers: dict[str, RunningQueen]
) -> None:
    alpha = providers["alpha"]
    body = {**BODY, "max_tokens": 400, "stream": True}
    events: list[str] = []
    try:
        with httpx.stream(
            "POST", f"{platform.url}/v1/completions", json=body, headers=platform.keyed, timeout=30
        ) as reply:
            assert reply.headers["x-rbee-provider"] == "alpha"
            for line in reply.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if len(events) == 3:
                        alpha.kill()
    finally:
        alpha.start()
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])
    assert error["error"]["code"] == "provider_lost" and "alpha" in error["error"]["message"]
    texts = [json.loads(event)["choices"][0]["text"] for event in events[:-2] if '"choices"' in event]
    assert texts and set(texts) == {" hi"} and len(texts) < 400, "the answer stopped; nobody else continued it"
    wait_for(lambda: next(p for p in listed(platform) if p["name"] == "alpha")["healthy"], "alpha probed healthy")


def usage_of(queen: RunningQueen, by: str) -> dict[str, dict[str, Any]]:
    answer = httpx.get(f"{queen.url}/v2/usage", params={"by": by}, headers=queen.operator, timeout=10).json()
    return {row["name"]: row for row in answer["rows"]}


def test_usage_records_sum_to_what_the_providers_report(
    platform: RunningQueen, providers: dict[str, RunningQueen]
) -> None:
    before = {name: usage_of(queen, "key").get("admin", {}) for name, queen in providers.items()}
    for region, tokens in (("DE", 7), ("US", 11), ("DE", 3), ("FR", 5)):
        reply = httpx.post(
            f"{platform.url}/v1/chat/completions",
            json={"model": "synthetic", "messages": [{"role": "user", "content": "say: x"}], "max_tokens": tokens},
            headers={**platform.keyed, "X-Rbee-Region": region},
            timeout=30,
        )
        assert reply.status_code == 200
    with httpx.stream(
        "POST",
        f"{platform.url}/v1/chat/completions",
        json={
            "model": "synthetic",
            "messages": [{"role": "user", "content": "say: x"}],
            "max_tokens": 9,
            "stream": True,
        },
        headers={**platform.keyed, "X-Rbee-Region": "US"},
        timeout=30,
    ) as streamed:
        streamed.read()
    billed = usage_of(platform, "provider")
    for name, queen in providers.items():
        theirs = usage_of(queen, "key")["admin"]
        delta = {field: theirs[field] - (before[name].get(field) or 0) for field in ("input_tokens", "output_tokens")}
        ours = billed[name]
        assert (ours["input_tokens"], ours["output_tokens"]) == (delta["input_tokens"], delta["output_tokens"]), name
    alpha, beta = billed["alpha"], billed["beta"]
    assert (alpha["output_tokens"], beta["output_tokens"], billed["gamma"]["output_tokens"]) == (10, 20, 5)
    assert alpha["cost"] == pytest.approx((0.1 * alpha["input_tokens"] + 0.2 * 10) / 1000)
    assert beta["billed"] == pytest.approx(beta["cost"] * 1.35), "the margin"
    shown = subprocess.run(
        [sys.executable, "-m", "rbee", "usage", "--by", "provider", "--since", "1h"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "RBEE_HOME": str(platform.home.root), "NO_COLOR": "1", "COLUMNS": "200"},
    )
    assert shown.returncode == 0 and "alpha" in shown.stdout and "beta" in shown.stdout, shown.stdout + shown.stderr
    metrics = httpx.get(f"{platform.url}/metrics", headers=platform.keyed).text
    assert 'rbee_usage_tokens_total{direction="output",key="admin",model="synthetic",provider="beta"} 20.0' in metrics


def test_providers_register_themselves(tmp_path: Path, providers: dict[str, RunningQueen]) -> None:
    os.environ["RBEE_TEST_REGISTRATION"] = "the-platforms-registration-key"
    federation = {**FAST, "registration_key": {"env": "RBEE_TEST_REGISTRATION"}}
    queen = start_queen(
        tmp_path, "market", replicas=0, providers=entries(providers)[:1], queen={"federation": federation}
    )
    beta = providers["beta"]
    offer = {
        "name": "beta-lab",
        "endpoint": f"{beta.url}/v1",
        "kind": "rbee",
        "key": beta.key,
        "models": ["synthetic"],
        "pricing": {"input": 0.01, "output": 0.01},
        "region": "us",
    }
    try:
        url = f"{queen.url}/v2/platform/providers"
        refused = httpx.post(url, json=offer, headers={"Authorization": "Bearer not-the-key"})
        assert refused.status_code == 401
        taken = httpx.post(
            url, json={**offer, "name": "alpha"}, headers={"Authorization": "Bearer the-platforms-registration-key"}
        )
        assert taken.status_code == 409, "hive.yaml's own names are not for the taking"
        made = httpx.post(url, json=offer, headers={"Authorization": "Bearer the-platforms-registration-key"})
        assert made.status_code == 201, made.text
        assert made.json()["key"] == "set" and beta.key not in made.text
        wait_for(lambda: any(p["name"] == "beta-lab" for p in listed(queen)), "listed")
        assert ask(queen).headers["x-rbee-provider"] == "beta-lab", "now the cheapest"
        queen.stop_queen()
        queen.start()  # registrations are kept in the queen's store
        wait_for(lambda: any(p["name"] == "beta-lab" and p["origin"] == "registered" for p in listed(queen)), "kept")
        assert ask(queen).headers["x-rbee-provider"] == "beta-lab"
        gone = httpx.delete(f"{url}/beta-lab", headers=queen.operator)
        assert gone.status_code == 200 and ask(queen).headers["x-rbee-provider"] == "alpha"
        log = (queen.home.queen_dir / "queen.log").read_text()
        assert beta.key not in log and "the-platforms-registration-key" not in log
    finally:
        queen.stop()


def test_the_plan_shows_providers_like_hives(platform: RunningQueen, providers: dict[str, RunningQueen]) -> None:
    spec = platform.spec.model_dump(mode="json", exclude_defaults=True)
    spec["providers"][0]["pricing"] = {"input": 0.1, "output": 0.25}  # alpha: repriced
    spec["providers"].append({"name": "nowhere", "endpoint": "http://127.0.0.1:9/v1"})
    del spec["providers"][1]  # beta: gone
    path = platform.home.root / "hive.yaml"
    path.write_text(json.dumps(spec))
    planned = subprocess.run(
        [sys.executable, "-m", "rbee", "plan", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RBEE_HOME": str(platform.home.root), "NO_COLOR": "1", "COLUMNS": "250"},
    )
    shown = planned.stdout
    assert f"provider alpha (rbee, {providers['alpha'].url}/v1)" in shown, shown + planned.stderr
    assert "~ change    provider alpha" in shown and 'pricing {"input":0.1,"output":0.2} -> ' in shown
    assert "= " in shown and "provider gamma" in shown and "as desired; answers, listing synthetic" in shown
    assert "- remove    provider beta" in shown
    assert "+ add       provider nowhere" in shown and "the queen probes it until it does" in shown


def test_an_openai_compatible_endpoint_as_provider(tmp_path: Path, providers: dict[str, RunningQueen]) -> None:
    """kind: openai takes chat, completions and embeddings; the usage chunk the platform asks for to meter a
    stream is taken out again for a client that did not ask for it."""
    plain = {**entries(providers)[1], "kind": "openai", "name": "plain"}
    queen = start_queen(tmp_path, "openai", replicas=0, providers=[plain], queen={"federation": FAST})
    try:
        wait_for(lambda: listed(queen) and listed(queen)[0]["models"], "probed")
        body = {"model": "synthetic", "messages": [{"role": "user", "content": "x"}], "max_tokens": 6, "stream": True}
        with httpx.stream("POST", f"{queen.url}/v1/chat/completions", json=body, headers=queen.keyed) as reply:
            events = [line[6:] for line in reply.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and not any('"usage"' in event for event in events), events
        with_usage = {**body, "stream_options": {"include_usage": True}}
        with httpx.stream("POST", f"{queen.url}/v1/chat/completions", json=with_usage, headers=queen.keyed) as reply:
            asked = [line[6:] for line in reply.iter_lines() if line.startswith("data: ")]
        assert any('"usage"' in event for event in asked), "asked for: passed on"
        messages = httpx.post(
            f"{queen.url}/v1/messages",
            json={"model": "synthetic", "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]},
            headers=queen.keyed,
        )
        assert messages.status_code == 503 and "plain takes no messages requests" in messages.text
        billed = usage_of(queen, "provider")["plain"]
        assert billed["requests"] == 2 and billed["output_tokens"] == 12, billed
    finally:
        queen.stop()


def test_a_real_model_answers_through_a_provider(tmp_path: Path) -> None:
    """One end-to-end answer from SmolLM2 served by a real fleet (rbee apply: hive, llama.cpp worker) that is the
    platform's provider: the platform holds no model at all."""
    from tests.fleet import applied_fleet, make_fleet
    from tests.models import SMOLLM2_SOURCE

    (tmp_path / "lab").mkdir()
    lab = make_fleet(tmp_path / "lab", SMOLLM2_SOURCE)
    with applied_fleet(lab) as fleet:
        os.environ["KEY_LAB"] = fleet.api_key
        provider = {"name": "lab", "endpoint": f"{fleet.queen_url}/v1", "kind": "rbee", "api_key": {"env": "KEY_LAB"}}
        queen = start_queen(tmp_path, "platform", replicas=0, providers=[{**provider, "models": ["smollm2"]}])
        try:
            with openai.OpenAI(base_url=f"{queen.url}/v1", api_key=queen.key, max_retries=0) as client:
                answer = client.chat.completions.create(
                    model="smollm2", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=12, seed=3
                )
            assert answer.choices[0].message.content and answer.usage is not None
            billed = usage_of(queen, "provider")["lab"]
            assert (billed["input_tokens"], billed["output_tokens"]) == (
                answer.usage.prompt_tokens,
                answer.usage.completion_tokens,
            )
        finally:
            queen.stop()
