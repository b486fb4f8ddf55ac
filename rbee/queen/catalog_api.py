"""Hives' catalogs, changed by the operator through the queen (the web UI's Pull and Remove; `rbee models pull`
and `rm` do the same straight to the hive): POST /v2/models/{model}/pull with `{"hive"}` starts fetching a model
of the applied hive.yaml and answers at once (its progress is in GET /v2/status's `fetches`); DELETE
/v2/models/{model}?hive=H removes it, refused while a worker uses it with the hive's own sentence.
"""

from __future__ import annotations

import asyncio

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rbee.clients.hive import HiveCallError, HiveClient
from rbee.queen import parts
from rbee.queen.errors import ClientError, read_object
from rbee.spec.schema import HiveFile, HiveSpec


def _hive(spec: HiveFile | None, name: object) -> tuple[HiveFile, HiveSpec]:
    if spec is None:
        raise ClientError(409, "no hive.yaml is applied yet: rbee apply first", code="no_spec")
    hive = spec.hive(name) if isinstance(name, str) else None
    if hive is None:
        names = ", ".join(h.name for h in spec.hives)
        raise ClientError(404, f"there is no hive {name} in hive.yaml; hives: {names}", code="unknown_hive")
    return spec, hive


async def pull(request: Request) -> Response:
    queen = parts.of(request)
    raw = await read_object(request, queen.fleet.max_body)
    spec, hive = _hive(queen.fleet.spec, raw.get("hive"))
    name = request.path_params["model"]
    model = spec.model(name)
    if model is None:
        models = ", ".join(m.name for m in spec.models)
        raise ClientError(404, f"there is no model {name} in hive.yaml; models: {models}", code="unknown_model")
    fetches = queen.reconciler.fetches
    if fetches.running(hive.name, name):
        raise ClientError(409, f"{name} is already being fetched to {hive.name}", code="already_fetching")
    fetch = fetches.begin(hive.name, name, "operator")
    client = HiveClient(hive, queen.credentials.hive(hive.name), queen.leadership.fence)

    async def run() -> None:
        error: str | None = None
        try:
            await client.add_model(model, lambda event: fetches.progress(fetch, event), pinned=True)
        except Exception as failure:  # any failure is this fetch's ending, told to the page
            error = f"Pulling {name} to {hive.name} failed: {failure}"
        finally:
            await client.close()
            fetches.end(fetch, error)
            queen.events.record(
                "failed" if error else "applied", f"{hive.name}/model {name}", error or "pulled by the operator"
            )
            await queen.fleet.refresh()

    fetches.keep(asyncio.get_running_loop().create_task(run()))
    return JSONResponse({"fetching": fetch.to_json()}, 202)


async def remove(request: Request) -> Response:
    queen = parts.of(request)
    _, hive = _hive(queen.fleet.spec, request.query_params.get("hive"))
    name = request.path_params["model"]
    client = HiveClient(hive, queen.credentials.hive(hive.name), queen.leadership.fence)
    try:
        await client.remove_model(name)
    except HiveCallError as error:
        raise ClientError(409, f"Removing {name} from {hive.name} failed: {error}", code="refused") from None
    except httpx.HTTPError as error:
        message = f"Removing {name} from {hive.name} failed: the hive does not answer ({error})"
        raise ClientError(502, message, code="hive_unreachable") from None
    finally:
        await client.close()
    queen.events.record("applied", f"{hive.name}/model {name}", "removed by the operator")
    await queen.fleet.refresh()
    return JSONResponse({"removed": name, "hive": hive.name})
