"""The web UI's files, served at /ui/ by the queen itself (no other server, no build step): plain HTML, CSS and
JavaScript modules from rbee/queen/ui/, read once, each sent with its ETag and a Content-Security-Policy that
lets the page load nothing but its own files and talk to nothing but this queen.

The files hold no data and no secret: the page asks for a credential and calls the same APIs the CLI does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

ASSETS = Path(__file__).parent / "ui"
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


@cache
def assets() -> dict[str, Asset]:
    """Every file of the UI by name (the folder is flat: no path from a request is ever joined to a file path)."""
    found: dict[str, Asset] = {}
    for path in sorted(ASSETS.iterdir()):
        if path.is_file() and path.suffix in TYPES:
            body = path.read_bytes()
            found[path.name] = Asset(body, TYPES[path.suffix], '"' + hashlib.sha256(body).hexdigest()[:16] + '"')
    return found


async def to_index(request: Request) -> Response:
    return RedirectResponse("/ui/", status_code=308)


async def page(request: Request) -> Response:
    asset = assets().get(request.path_params.get("name") or "index.html")
    if asset is None:
        return PlainTextResponse("no such page in rbee's web UI", status_code=404)
    headers = {
        "ETag": asset.etag,
        "Cache-Control": "no-cache",
        "Content-Security-Policy": POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)
