"""Read live state from each hive's `GET /v1/state`.

A hive that does not answer is observed as such, with the reason: `down` when its machine refused the
connection (daemon stopped or never installed), `unreachable` when nothing answered in time.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from pathlib import Path

import aiohttp
import pydantic

from rbee.api import wire
from rbee.api.credentials import FleetCredentials
from rbee.api.state import HiveObservation, HiveState, HiveStatus, ObservedState
from rbee.clients import tls
from rbee.spec.schema import HiveFile, HiveSpec

DEFAULT_TIMEOUT = 3.0
INSTALL_MARKER = "hive.json"
"""Written into a hive's data dir by its install step; its presence means rbee is installed there."""


def observe(
    spec: HiveFile, *, timeout: float = DEFAULT_TIMEOUT, credentials: FleetCredentials | None = None
) -> ObservedState:
    return asyncio.run(observe_async(spec, timeout=timeout, credentials=credentials))


async def observe_async(
    spec: HiveFile,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    credentials: FleetCredentials | None = None,
    client: aiohttp.ClientSession | None = None,
) -> ObservedState:
    """Observe every hive at once, each asked with its own credential. A long-lived caller passes its own
    `client` (from `make_client`) and keeps its connections between observations. aiohttp, not httpx: httpx's
    pool took 28 s for 1,000 hives here."""
    if client is not None:
        observations = await asyncio.gather(
            *(
                _observe_hive(client, hive, timeout, credentials.hive(hive.name) if credentials else None)
                for hive in spec.hives
            )
        )
        return ObservedState(hives=tuple(observations))
    async with make_client() as own:
        return await observe_async(spec, timeout=timeout, credentials=credentials, client=own)


def make_client() -> aiohttp.ClientSession:
    """A session for observing hives: no connection limit, keep-alive."""
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, ssl=tls.context())
    return aiohttp.ClientSession(connector=connector, trust_env=False)


async def _observe_hive(
    client: aiohttp.ClientSession, hive: HiveSpec, timeout: float, credential: str | None
) -> HiveObservation:
    url = f"{hive.api_url}/v1/state"
    try:
        async with asyncio.timeout(timeout):
            async with client.get(url, headers=wire.bearer(credential)) as response:
                status, content = response.status, await response.read()
    except TimeoutError:
        return _unreachable(hive, f"no answer from {hive.api_url} within {timeout:g} s")
    except aiohttp.ClientConnectorError as error:
        if _refused(error):
            return HiveObservation(
                name=hive.name,
                status=HiveStatus.DOWN,
                reason=f"nothing listens on {hive.api_url}",
                installed=_installed_locally(hive),
            )
        if isinstance(error.os_error, socket.gaierror):
            return _unreachable(hive, f"the name in {hive.api_url} does not resolve")
        return _unreachable(hive, f"cannot connect to {hive.api_url} ({_cause(error.os_error)})")
    except (aiohttp.ClientError, OSError) as error:
        return _unreachable(hive, f"{hive.api_url} broke off ({_cause(error)})")
    if status in (401, 403):
        return _unreachable(
            hive, f"{hive.api_url} refused this fleet's credential for hive {hive.name} (HTTP {status})"
        )
    if status != 200:
        return _unreachable(hive, f"{url} answered HTTP {status}")
    try:
        state = HiveState.model_validate_json(content)
    except pydantic.ValidationError:
        return _unreachable(hive, f"{url} answered something that is not a hive state")
    if state.name != hive.name:
        return _unreachable(hive, f"{hive.api_url} is hive '{state.name}', not '{hive.name}'")
    return HiveObservation(name=hive.name, status=HiveStatus.RUNNING, installed=True, state=state)


def _unreachable(hive: HiveSpec, reason: str) -> HiveObservation:
    return HiveObservation(name=hive.name, status=HiveStatus.UNREACHABLE, reason=reason)


def _refused(error: BaseException) -> bool:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError) or getattr(seen, "errno", None) == errno.ECONNREFUSED:
            return True
        if "Connection refused" in str(seen) or "Errno 111" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _cause(error: BaseException) -> str:
    return str(error) or type(error).__name__


def _installed_locally(hive: HiveSpec) -> bool | None:
    if hive.ssh is not None:
        return None
    return (Path(hive.data_path).expanduser() / INSTALL_MARKER).is_file()
