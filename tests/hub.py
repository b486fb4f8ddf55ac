"""A local server that speaks as much of the Hugging Face Hub protocol as huggingface_hub's downloads use,
so the real download code runs in tests (FACTS.md)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Hub:
    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    cut_once: set[str] = field(default_factory=set)
    """Files whose first GET breaks off halfway, as a flaky network does."""
    cut_then_down: set[str] = field(default_factory=set)
    """Files whose first GET breaks off halfway and whose next GET gets 503, so the download fails for now."""
    cut_then_wrong_range: set[str] = field(default_factory=set)
    """Files whose first GET breaks off halfway and whose resume gets a 206 from byte 0, as a broken proxy does."""
    oversized: set[str] = field(default_factory=set)
    """Files served with more bytes than the tree and HEAD declare."""
    slow: set[str] = field(default_factory=set)
    """Files served in 64 KiB pieces, 50 ms apart."""
    on_cdn: set[str] = field(default_factory=set)
    """Files the Hub redirects to its CDN, as it does LFS files: the size is only in X-Linked-Size."""
    page_size: int = 1000
    """Files per page of a tree listing; more come behind a `Link: <…?cursor=N>; rel="next"` header."""

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/api/models/{org}/{name}/revision/{revision}", self.revision),
                Route("/api/models/{org}/{name}/tree/{revision}", self.tree),
                Route("/{org}/{name}/resolve/{revision}/{path:path}", self.resolve, methods=["GET", "HEAD"]),
            ]
        )

    def _missing(self, code: str, message: str) -> Response:
        headers = {"X-Error-Code": code, "X-Error-Message": message}
        if code == "EntryNotFound":
            headers["X-Repo-Commit"] = COMMIT
        return JSONResponse({"error": message}, 404, headers=headers)

    async def revision(self, request: Request) -> Response:
        repo = f"{request.path_params['org']}/{request.path_params['name']}"
        if repo not in self.repos:
            return self._missing("RepoNotFound", "Repository not found")
        return JSONResponse({"id": repo, "sha": COMMIT, "siblings": [{"rfilename": p} for p in self.repos[repo]]})

    async def tree(self, request: Request) -> Response:
        repo = f"{request.path_params['org']}/{request.path_params['name']}"
        if repo not in self.repos:
            return self._missing("RepoNotFound", "Repository not found")
        files = [
            {"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
            for path, data in self.repos[repo].items()
        ]
        start = int(request.query_params.get("cursor", "0"))
        page, rest = files[start : start + self.page_size], files[start + self.page_size :]
        headers = {}
        if rest:
            headers["Link"] = f'<{request.url.replace_query_params(cursor=start + self.page_size)}>; rel="next"'
        return JSONResponse(page, headers=headers)

    async def resolve(self, request: Request) -> Response:
        repo = f"{request.path_params['org']}/{request.path_params['name']}"
        path = request.path_params["path"]
        ranged = request.headers.get("range", "")
        self.requests.append(f"{request.method} {repo}/{path}" + (f" {ranged}" if ranged else ""))
        if repo not in self.repos:
            return self._missing("RepoNotFound", "Repository not found")
        data = self.repos[repo].get(path)
        if data is None:
            return self._missing("EntryNotFound", "Entry not found")
        headers = {
            "X-Repo-Commit": COMMIT,
            "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
            "Content-Length": str(len(data)),
            "Accept-Ranges": "bytes",
        }
        status = 200
        key = f"{repo}/{path}"
        if key in self.on_cdn:
            cdn = {"Location": f"http://127.0.0.1:1/cdn/{key}", "X-Linked-Size": str(len(data))}
            return Response(b"", 302, headers={**headers, **cdn, "Content-Length": "0"})
        if request.method == "GET" and key in self.cut_then_down:
            if not ranged:
                return StreamingResponse(_break_off(data), 200, headers=headers)
            self.cut_then_down.discard(key)
            return JSONResponse({"error": "down for maintenance"}, 503)
        if request.method == "GET" and key in self.cut_then_wrong_range:
            if not ranged:
                return StreamingResponse(_break_off(data), 200, headers=headers)
            self.cut_then_wrong_range.discard(key)
            wrong = {**headers, "Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}"}
            return Response(data, 206, headers=wrong)
        if request.method == "GET" and key in self.slow:
            return StreamingResponse(_slowly(data), 200, headers=headers)
        if request.method == "GET" and key in self.oversized:
            return StreamingResponse(
                _all_and_more(data), 200, headers={**headers, "Content-Length": str(len(data) + 4096)}
            )
        if request.method == "GET" and f"{repo}/{path}" in self.cut_once and not ranged:
            self.cut_once.discard(f"{repo}/{path}")
            return StreamingResponse(_break_off(data), 200, headers=headers)
        if ranged.startswith("bytes="):
            start = int(ranged[6:].split("-")[0] or 0)
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            data, status = data[start:], 206
            headers["Content-Length"] = str(len(data))
        if request.method == "HEAD":
            return Response(b"", status, headers=headers)
        return Response(data, status, headers=headers)


async def _slowly(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 64 << 10):
        yield data[start : start + (64 << 10)]
        await asyncio.sleep(0.05)


async def _all_and_more(data: bytes) -> AsyncIterator[bytes]:
    yield data
    yield b"\0" * 4096


async def _break_off(data: bytes) -> AsyncIterator[bytes]:
    yield data[: len(data) // 2]
    raise ConnectionAbortedError("the test hub cuts this download halfway")
