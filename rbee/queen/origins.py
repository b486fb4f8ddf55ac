"""What a browser may do with the queen: nothing it was not allowed. Three checks on every request, before any
handler runs (an ASGI wrapper that reads only the request's headers, so relayed streams pay nothing):

- the Host header names an IP address, localhost, or a name in `queen.allowed_hosts`: a page on an attacker's
  domain that rebinds to this machine's address (DNS rebinding) is refused;
- an Origin header, which browsers send and other clients do not, must be the queen's own (its web UI at /ui/,
  served from the Host just checked) or in `queen.cors_origins` (none by default);
- a POST or PUT carries JSON (`Content-Type: application/json`): a cross-site form or `text/plain` request, which
  a browser sends without asking, is refused. The one exception is an upload to transcribe (OpenAI's shape is
  a multipart form): it still needs an API key, which no cross-site form can send, and its answer is not
  readable from another origin.
"""

from __future__ import annotations

import functools
import ipaddress
import json
from collections.abc import Callable
from typing import Any

from rbee.api import openai as oai
from rbee.api import wire
from rbee.spec.schema import HiveFile

LOOPBACK_NAMES = frozenset({"localhost"})
UPLOADS = frozenset({"/v1/audio/transcriptions", "/v1/audio/translations"})


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rpartition(":")[0] if host.count(":") == 1 else host


@functools.lru_cache(maxsize=256)  # a queen is asked under a handful of names; parsing one each time cost 2%
def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class BrowserGuard:
    def __init__(self, app: Any, spec: Callable[[], HiveFile | None]) -> None:
        self.app = app
        self.spec = spec

    def _refusal(self, scope: dict[str, Any]) -> tuple[int, str, str] | None:
        headers = dict(scope.get("headers") or ())
        spec = self.spec()
        host_header = headers.get(b"host", b"").decode("latin-1").lower()
        host = _host_name(host_header)
        allowed = spec.queen.allowed_hosts if spec else ()
        if host and not (_is_address(host) or host in LOOPBACK_NAMES or host in allowed):
            return 421, f"this queen does not answer to the name {host}; add it to queen.allowed_hosts", "bad_host"
        origin = headers.get(b"origin")
        own = f"{scope.get('scheme', 'http')}://{host_header}"
        if (
            origin is not None
            and origin.decode("latin-1").lower() != own
            and (origin.decode("latin-1") not in (spec.queen.cors_origins if spec else ()))
        ):
            return 403, "requests from web pages are refused unless their origin is in queen.cors_origins", "origin"
        if scope.get("method") in ("POST", "PUT"):
            kind = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
            has_body = headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers
            upload = kind == b"multipart/form-data" and scope.get("path") in UPLOADS
            if kind != b"application/json" and has_body and not upload:
                return 415, "the body must be JSON, sent with Content-Type: application/json", "unsupported_media_type"
        return None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            refusal = self._refusal(scope)
            if refusal is not None:
                status, message, code = refusal
                client_api = scope["path"].startswith(("/v1/", "/v2/tasks"))
                shape = (
                    oai.error(message, "invalid_request_error", code) if client_api else wire.error_body(message, code)
                )
                body = json.dumps(shape).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": status,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
