"""Observing providers for a plan: each of hive.yaml's asked for its models (`GET {endpoint}/models`, with its key
from this process's environment: the one the queen started by `rbee apply` inherits), each the queen holds now
noted with how it holds it. A provider that does not answer is planned all the same: the queen probes it."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Iterable

import aiohttp

from rbee.api.state import ProviderObservation
from rbee.spec.providers import ProviderSpec


async def observe(
    desired: Iterable[ProviderSpec], applied: Iterable[ProviderSpec], timeout: float
) -> tuple[ProviderObservation, ...]:
    held = {provider.name: provider.model_dump_json() for provider in applied}
    wanted = list(desired)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        asked = await asyncio.gather(*(_ask(session, provider) for provider in wanted))
    found = [
        ProviderObservation(
            name=provider.name, reachable=ok, reason=reason, models=models, applied=held.pop(provider.name, None)
        )
        for provider, (ok, reason, models) in zip(wanted, asked, strict=True)
    ]
    found.extend(ProviderObservation(name=name, applied=spec) for name, spec in sorted(held.items()))
    return tuple(found)


async def _ask(session: aiohttp.ClientSession, provider: ProviderSpec) -> tuple[bool, str, tuple[str, ...]]:
    key = os.environ.get(provider.api_key.env) if provider.api_key is not None else None
    if provider.api_key is not None and not key:
        return False, f"${provider.api_key.env} is not set here", ()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    trust: ssl.SSLContext | bool = True
    if provider.ca_file is not None:
        try:
            trust = ssl.create_default_context(cafile=os.path.expanduser(provider.ca_file))
        except (OSError, ssl.SSLError) as error:
            return False, f"its ca_file cannot be read ({error})", ()
    try:
        async with session.get(f"{provider.endpoint}/models", headers=headers, ssl=trust) as response:
            if response.status in (401, 403):
                return False, f"it refuses the key in ${provider.api_key.env if provider.api_key else '(none)'}", ()
            if response.status != 200:
                return False, f"HTTP {response.status}", ()
            listed = (await response.json(content_type=None)).get("data", [])
            return True, "", tuple(str(item["id"]) for item in listed if isinstance(item, dict) and "id" in item)
    except (aiohttp.ClientError, TimeoutError, ConnectionError, ValueError, AttributeError) as error:
        return False, type(error).__name__, ()
