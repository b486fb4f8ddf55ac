"""Federation's pure parts as tables: which candidates a request tries in which order (price, region, speed,
this fleet's own workers free or busy), the X-Rbee-* headers, and the tokens an answer says it took."""

from __future__ import annotations

import asyncio

import pytest

from rbee.queen import federation, ranking
from rbee.queen.auth import Key
from rbee.queen.errors import ClientError
from rbee.queen.providers import Provider
from rbee.spec import load
from rbee.spec.providers import Pricing, ProviderSpec, RoutePreferences

SPECS = {
    "alpha": {"pricing": {"input": 0.1, "output": 0.2}, "region": "eu", "country": "DE"},
    "beta": {"pricing": {"input": 0.5, "output": 0.5}, "region": "us"},
    "gamma": {"pricing": {"input": 0.2, "output": 0.3}, "region": "eu", "country": "FR", "kind": "rbee"},
}


def providers(**ttft: float) -> list[Provider]:
    made = []
    for name, fields in SPECS.items():
        spec = ProviderSpec.model_validate(
            {"name": name, "endpoint": f"https://{name}.example/v1", "models": ["m"], **fields}
        )
        provider = Provider(spec, None)
        if name in ttft:
            provider.ttft["m"] = ttft[name]
        made.append(provider)
    return made


def order(prefs: RoutePreferences, local: ranking.Local | None = None, shape: str = "chat", **ttft: float) -> list[str]:
    own = local or ranking.Local(False, False, None, Pricing())
    ranked, _ = ranking.rank("m", ranking.Shape(shape), prefs, own, providers(**ttft))
    return [candidate.name + ("(queue)" if candidate.queues else "") for candidate in ranked]


FREE = ranking.Local(True, True, 0.05, Pricing())
BUSY = ranking.Local(True, False, 0.05, Pricing())


@pytest.mark.parametrize(
    ("prefs", "local", "expected"),
    [
        (RoutePreferences(), None, ["alpha", "gamma", "beta"]),
        (RoutePreferences(), FREE, ["local", "alpha", "gamma", "beta"]),
        (RoutePreferences(), BUSY, ["alpha", "gamma", "beta", "local(queue)"]),
        (RoutePreferences(region=("eu",)), BUSY, ["alpha", "gamma", "local(queue)"]),
        (RoutePreferences(region=("FR", "us")), None, ["gamma", "beta"]),
        (RoutePreferences(max_price=0.3), None, ["alpha", "gamma"]),
        (RoutePreferences(local="never"), FREE, ["alpha", "gamma", "beta"]),
        (RoutePreferences(prefer="cheapest"), FREE, ["local", "alpha", "gamma", "beta"]),
        (RoutePreferences(prefer="fastest"), FREE, ["local", "alpha", "gamma", "beta"]),
    ],
)
def test_the_order_of_candidates(prefs: RoutePreferences, local: ranking.Local | None, expected: list[str]) -> None:
    assert order(prefs, local) == expected


def test_fastest_by_measured_time_to_first_token_unmeasured_last() -> None:
    fastest = RoutePreferences(prefer="fastest")
    assert order(fastest, FREE, beta=0.01, gamma=0.2) == ["beta", "local", "gamma", "alpha"]
    expensive_here = ranking.Local(True, True, None, Pricing(input=1, output=1))
    assert order(RoutePreferences(prefer="cheapest"), expensive_here) == ["alpha", "gamma", "beta", "local"]


def test_the_left_out_say_why_and_openai_endpoints_take_only_their_shapes() -> None:
    unhealthy = providers()
    unhealthy[1].failed("refused our key", 3, at_once=True)
    ranked, left_out = ranking.rank("m", ranking.Shape.MESSAGES, RoutePreferences(max_price=0.25), FREE, unhealthy)
    assert [candidate.name for candidate in ranked] == ["local"]
    chat, _ = ranking.rank("m", ranking.Shape.CHAT, RoutePreferences(), FREE, unhealthy)
    assert "beta" not in [candidate.name for candidate in chat]
    assert left_out == [
        "alpha takes no messages requests (an OpenAI-compatible endpoint)",
        "beta takes no messages requests (an OpenAI-compatible endpoint)",
        "gamma costs 0.3 per 1k tokens, over the 0.25 asked",
    ]


def test_headers_override_the_keys_defaults() -> None:
    key = Key("tenant", None, None, RoutePreferences(prefer="cheapest", region=("eu",), max_price=1.0))
    chosen = ranking.preferences(key, {"x-rbee-region": "us, CA", "x-rbee-max-price": "0.5"})
    assert (chosen.prefer, chosen.region, chosen.max_price) == ("cheapest", ("us", "CA"), 0.5)
    assert ranking.preferences(None, {}) == RoutePreferences()
    for header, value in (
        ("x-rbee-prefer", "soon"),
        ("x-rbee-max-price", "-1"),
        ("x-rbee-max-price", "nan"),
        ("x-rbee-region", "a b"),
    ):
        with pytest.raises(ClientError) as refused:
            ranking.preferences(None, {header: value})
        assert refused.value.param.lower() == header


RBEE_END = b"".join(
    [b'data: {"choices":[]}\n\n', b': rbee-end {"prompt_tokens":8,"completion_tokens":3,"finish_reason":"length"}\n\n']
)
OPENAI_USAGE = b"".join(
    [
        b'data: {"choices":[{"delta":{}}]}\n\n',
        b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":6}}\n\n',
        b"data: [DONE]\n\n",
    ]
)
RESPONSES_COMPLETED = b"".join(
    [
        b'event: response.completed\ndata: {"type":"response.completed",',
        b'"response":{"usage":{"input_tokens":3,"output_tokens":1}}}\n\n',
    ]
)


@pytest.mark.parametrize(
    ("answer", "tokens"),
    [
        (RBEE_END, (8, 3)),
        (b'{"id":"x","usage":{"prompt_tokens":12,"completion_tokens":4,"total_tokens":16}}', (12, 4)),
        (b'{"type":"message","usage":{"input_tokens":9,"output_tokens":2}}', (9, 2)),
        (OPENAI_USAGE, (5, 6)),
        (RESPONSES_COMPLETED, (3, 1)),
        (b"not json at all", (0, 0)),
    ],
)
def test_the_tokens_an_answer_says_it_took(answer: bytes, tokens: tuple[int, int]) -> None:
    assert federation.tokens_in(answer) == tokens


def test_the_usage_chunk_this_queen_asked_for_is_taken_out() -> None:
    passed: list[bytes] = []

    async def keep(chunk: bytes) -> None:
        passed.append(chunk)

    stream = (
        b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":1}}\n\ndata: [DONE]\n\n'
    )
    cut = UsageFilterRun(keep, [stream[:30], stream[30:90], stream[90:]])
    assert cut.usage == (5, 1)
    assert b"".join(passed) == b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\ndata: [DONE]\n\n'


def UsageFilterRun(keep, chunks):
    passing = federation.UsageFilter(keep)

    async def run() -> None:
        for chunk in chunks:
            await passing.deliver(chunk)

    asyncio.run(run())
    return passing


def test_providers_in_hive_yaml() -> None:
    spec = load.loads(
        """
hives: [{name: box}]
models: [{name: m, source: 'file:///m.gguf'}]
workers: [{model: m, hive: box}]
providers:
  - name: friend
    endpoint: https://friend.example:8080/v1/
    api_key: {env: FRIEND_KEY}
    models: [m, {name: big, remote: meta/Llama-70B, pricing: {input: 1, output: 2}}]
    pricing: {input: 0.1, output: 0.2}
    region: eu-west
    country: DE
    sla: {ttft_p95: 2s}
queen:
  federation: {margin: 0.35, retry_budget: 5s}
  api_keys: [{env: TENANT, models: [big], routing: {prefer: cheapest, max_price: 3}}]
""",
        "hive.yaml",
    )
    friend = spec.providers[0]
    assert friend.endpoint == "https://friend.example:8080/v1" and friend.sla is not None and friend.sla.ttft_p95 == 2
    provider = Provider(friend, "k")
    assert provider.remote("big") == "meta/Llama-70B" and provider.remote("m") == "m" and provider.remote("x") is None
    assert provider.pricing("big").output == 2 and provider.pricing("m").output == 0.2
    assert spec.queen.federation.margin == 0.35 and spec.queen.api_keys[0].routing is not None


@pytest.mark.parametrize(
    ("provider", "words"),
    [
        ("{name: f, endpoint: 'ftp://x'}", "is not an http(s) URL"),
        ("{name: f, endpoint: 'https://user:pw@x/v1'}", "is not an http(s) URL"),
        ("{name: f, endpoint: 'https://x/v1', api_key: sk-inline}", "never written inline"),
        ("{name: f, endpoint: 'https://x/v1', country: de}", "country"),
        ("{name: f, endpoint: 'https://x/v1', models: [{name: m, kind: embedding}]}", "give it the same kind"),
    ],
)
def test_bad_providers_are_one_sentence(provider: str, words: str) -> None:
    document = f"""
hives: [{{name: box}}]
models: [{{name: m, source: 'file:///m.gguf'}}]
providers: [{provider}]
"""
    with pytest.raises(load.SpecError) as caught:
        load.loads(document, "hive.yaml")
    assert len(caught.value.problems) == 1 and words in caught.value.problems[0], caught.value.problems
