"""Read live state from each hive's `GET /v1/state`.

A hive that does not answer is observed as such, with the reason: `down` when its machine refused the
connection (daemon stopped or never installed), `unreachable` when nothing answered in time.
"""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

import httpx
import pydantic

from rbee.api.state import HiveObservation, HiveState, HiveStatus, ObservedState
from rbee.spec.schema import HiveFile, HiveSpec

DEFAULT_TIMEOUT = 3.0
INSTALL_MARKER = "hive.json"
"""Written into a hive's data dir by its install step; its presence means rbee is installed there."""


def observe(spec: HiveFile, *, timeout: float = DEFAULT_TIMEOUT, token: str | None = None) -> ObservedState:
    return asyncio.run(observe_async(spec, timeout=timeout, token=token))


async def observe_async(
    spec: HiveFile,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    token: str | None = None,
    client: httpx.AsyncClient | None = None,
) -> ObservedState:
    """Observe every hive at once. A long-lived caller passes its own `client` (from `make_client`): making
    one builds a TLS context, which costs tens of milliseconds of CPU."""
    if client is not None:
        observations = await asyncio.gather(*(_observe_hive(client, hive, timeout) for hive in spec.hives))
        return ObservedState(hives=tuple(observations))
    async with make_client(token, len(spec.hives)) as own:
        return await observe_async(spec, timeout=timeout, client=own)


def make_client(token: str | None, hives: int = 16) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    limits = httpx.Limits(max_connections=max(hives, 16), max_keepalive_connections=max(hives, 16))
    return httpx.AsyncClient(headers=headers, limits=limits, trust_env=False)


async def _observe_hive(client: httpx.AsyncClient, hive: HiveSpec, timeout: float) -> HiveObservation:
    url = f"{hive.api_url}/v1/state"
    try:
        response = await asyncio.wait_for(client.get(url, timeout=timeout), timeout)
    except (TimeoutError, httpx.TimeoutException):
        return _unreachable(hive, f"no answer from {hive.api_url} within {timeout:g} s")
    except httpx.ConnectError as error:
        if _refused(error):
            return HiveObservation(
                name=hive.name,
                status=HiveStatus.DOWN,
                reason=f"nothing listens on {hive.api_url}",
                installed=_installed_locally(hive),
            )
        if "Name or service not known" in str(error) or "nodename nor servname" in str(error):
            return _unreachable(hive, f"the name in {hive.api_url} does not resolve")
        return _unreachable(hive, f"cannot connect to {hive.api_url} ({_cause(error)})")
    except httpx.HTTPError as error:
        return _unreachable(hive, f"{hive.api_url} broke off ({_cause(error)})")
    if response.status_code in (401, 403):
        return _unreachable(hive, f"{hive.api_url} refused the cluster token (HTTP {response.status_code})")
    if response.status_code != 200:
        return _unreachable(hive, f"{url} answered HTTP {response.status_code}")
    try:
        state = HiveState.model_validate_json(response.content)
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
