"""How much each model a plan would fetch will download, asked of the Hugging Face Hub this machine sees
(huggingface_hub's own endpoint and token: `HF_ENDPOINT`, `HF_TOKEN` or a login) before planning, so `rbee plan`
can show it.

Only hf:// sources that some hive lacks are asked, all at once and under one time bound: a plan never waits on a
slow Hub for long, and a size that cannot be told is left out (the plan then says nothing of it); with
`HF_HUB_OFFLINE` set nothing is asked. file:// models live on their hive and pypi:// wheels are fetched by the
hive's pip, so neither is asked here.
"""

from __future__ import annotations

import asyncio
import re
from urllib.parse import quote

import aiohttp

from rbee.api.state import DownloadSize, HiveStatus, ObservedState
from rbee.spec.schema import HiveFile, ModelSpec
from rbee.spec.source import CODE_SUFFIXES, SourceKind

SIZE_TIMEOUT = 5.0
"""The most a plan waits for the Hub to tell sizes."""
MAX_PAGES = 50
"""Tree pages of one repo (the Hub pages its file lists); a bigger repo's size is not told."""
_NEXT = re.compile(r'<([^>]+)>;\s*rel="next"')


def sizes(spec: HiveFile, observed: ObservedState, timeout: float = SIZE_TIMEOUT) -> ObservedState:
    """`observed` with the download size of every hf:// model that a hive of `spec` still has to fetch."""
    if not _to_fetch(spec, observed):
        return observed
    return asyncio.run(sizes_async(spec, observed, timeout))


async def sizes_async(spec: HiveFile, observed: ObservedState, timeout: float = SIZE_TIMEOUT) -> ObservedState:
    """`sizes`, in a running event loop (the queen's plan for the web UI)."""
    wanted = _to_fetch(spec, observed)
    if not wanted:
        return observed
    from huggingface_hub import constants, get_token  # only a plan that fetches from the Hub pays the import

    if constants.HF_HUB_OFFLINE:
        return observed
    token = get_token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    found = await _ask_all(wanted, constants.ENDPOINT.rstrip("/"), headers, timeout)
    return observed.model_copy(update={"downloads": tuple(found)})


def _to_fetch(spec: HiveFile, observed: ObservedState) -> list[ModelSpec]:
    models = {model.name: model for model in spec.models}
    wanted: dict[str, ModelSpec] = {}
    for worker in spec.workers:
        model = models.get(worker.model)
        if model is None or model.parsed_source.kind is not SourceKind.HF:
            continue
        hive = observed.hive(worker.hive)
        state = hive.state if hive is not None and hive.status is HiveStatus.RUNNING else None
        has = state is not None and any(
            entry.name == model.name and entry.source == model.source for entry in state.catalog
        )
        if not has:
            wanted[model.source] = model
    return list(wanted.values())


async def _ask_all(
    models: list[ModelSpec], endpoint: str, headers: dict[str, str], timeout: float
) -> list[DownloadSize]:
    bound = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=bound, headers=headers) as session:
        try:
            async with asyncio.timeout(timeout):
                answers = await asyncio.gather(
                    *(_size(session, endpoint, model) for model in models), return_exceptions=True
                )
        except TimeoutError:
            return []
    return [
        DownloadSize(source=model.source, bytes=answer)
        for model, answer in zip(models, answers, strict=True)
        if isinstance(answer, int)
    ]


async def _size(session: aiohttp.ClientSession, endpoint: str, model: ModelSpec) -> int | None:
    source = model.parsed_source
    revision = quote(source.revision or "main", safe="")
    if source.path:
        return await _file_size(session, f"{endpoint}/{source.location}/resolve/{revision}/{quote(source.path)}")
    return await _repo_size(session, endpoint, f"{endpoint}/api/models/{source.location}/tree/{revision}", model)


async def _file_size(session: aiohttp.ClientSession, url: str) -> int | None:
    # The Hub answers a large file's HEAD with a redirect to its CDN and the size in X-Linked-Size; the
    # redirect is not followed, so nothing leaves for the CDN.
    async with session.head(url, allow_redirects=False) as response:
        if response.status >= 400:
            return None
        told = response.headers.get("X-Linked-Size") or (
            response.headers.get("Content-Length") if response.status == 200 else None
        )
        return int(told) if told and told.isdigit() else None


async def _repo_size(session: aiohttp.ClientSession, endpoint: str, url: str, model: ModelSpec) -> int | None:
    total = 0
    next_url: str | None = f"{url}?recursive=true"
    for _ in range(MAX_PAGES):
        if next_url is None:
            return total
        async with session.get(next_url, allow_redirects=False) as response:
            if response.status != 200:
                return None
            items = await response.json(content_type=None)
            found = _NEXT.search(response.headers.get("Link", ""))
            next_url = found.group(1) if found else None
        if next_url is not None and not next_url.startswith(f"{endpoint}/"):
            return None  # the token goes to the Hub the user named and nowhere else
        if not isinstance(items, list):
            return None
        for item in items:
            if not isinstance(item, dict) or item.get("type") != "file" or not isinstance(item.get("size"), int):
                continue
            if model.code_files != "fetch" and str(item.get("path", "")).lower().endswith(CODE_SUFFIXES):
                continue  # the hive leaves these behind too
            total += item["size"]
    return total if next_url is None else None
