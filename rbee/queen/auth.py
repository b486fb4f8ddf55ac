"""Who may call the queen: clients with an API key (the admin key made by `rbee apply`, and the keys hive.yaml
names by environment variable, optionally scoped to models and limited in concurrency); the operator with its
credential; each hive with its own (api/credentials.py), for its own heartbeats only.

A client's key is checked before its body is read: an anonymous client learns nothing about the API's fields
and costs no parsing.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from rbee.api.credentials import FleetCredentials, bearer_of, matches, usable
from rbee.queen.errors import ClientError, Handler
from rbee.spec.providers import RoutePreferences
from rbee.spec.schema import HiveFile

log = logging.getLogger("rbee.queen")
ADMIN_RECHECK = 1.0


@dataclass(frozen=True, slots=True)
class Key:
    name: str
    """`admin`, or the environment variable it came from: what the request log and metrics call it."""
    models: tuple[str, ...] | None
    max_concurrent: int | None
    routing: RoutePreferences | None = None
    """How its requests choose among this fleet and its providers by default (federation.py)."""


ADMIN_KEY = Key("admin", None, None)


class ApiKeys:
    def __init__(self, admin_key_file: Path | None = None) -> None:
        self.admin_key_file = admin_key_file
        self.keys: dict[str, Key] = {}
        self.required = True
        """False only where hive.yaml says `auth: none` (allowed on a loopback address only)."""
        self._admin: str | None = None
        self._admin_stamp: float | None = None
        self._looked = -ADMIN_RECHECK

    def admin_key(self) -> str | None:
        """The admin key, read again when its file changed (`rbee key --rotate`), looked at once a second at most:
        a rotated key stops working within a second."""
        now = time.monotonic()
        if self.admin_key_file is not None and now - self._looked >= ADMIN_RECHECK:
            self._looked = now
            try:
                stamp = self.admin_key_file.stat().st_mtime
                if stamp != self._admin_stamp:
                    value = self.admin_key_file.read_text().strip()
                    self._admin, self._admin_stamp = (value if usable(value) else None), stamp
            except OSError:
                self._admin, self._admin_stamp = None, None
        return self._admin

    def configure(self, spec: HiveFile, environ: Mapping[str, str] = os.environ) -> None:
        keys: dict[str, Key] = {}
        for ref in spec.queen.api_keys:
            value = environ.get(ref.env)
            if value:
                keys[value] = Key(ref.env, ref.models, ref.max_concurrent, ref.routing)
            else:
                log.warning("API key variable %s is not set in the queen's environment; that key is refused", ref.env)
        self.keys, self.required = keys, spec.queen.auth != "none"

    def authenticate(self, request: Request) -> Key | None:
        """The key the request carries (None when the queen needs none); 401 without a valid one."""
        if not self.required:
            return None
        # Authorization: Bearer KEY (OpenAI's clients), or x-api-key: KEY (Anthropic's)
        given = (bearer_of(request.headers.get("authorization", "")) or request.headers.get("x-api-key", "")).encode()
        admin = self.admin_key()
        if admin is not None and hmac.compare_digest(given, admin.encode()):
            return ADMIN_KEY
        for value, key in self.keys.items():
            if hmac.compare_digest(given, value.encode()):
                return key
        raise ClientError(
            401,
            "a valid API key is required: send Authorization: Bearer <key> (rbee key shows the admin key)",
            "authentication_error",
            "invalid_api_key",
        )

    @staticmethod
    def permit(key: Key | None, model: str) -> None:
        """403 when `key` may not use `model`."""
        if key is not None and key.models is not None and model not in key.models:
            raise ClientError(
                403, f"this API key may not use model {model}", "permission_error", "model_not_allowed", "model"
            )

    def authorize(self, request: Request, model: str | None) -> Key | None:
        key = self.authenticate(request)
        if model is not None:
            self.permit(key, model)
        return key


def operator_only(credentials: FleetCredentials) -> Callable[[Handler], Handler]:
    """The operator API's guard: the operator's credential, and nothing else (not a hive's, not an API key)."""

    def wrap(handler: Handler) -> Handler:
        async def check(request: Request) -> Response:
            if not matches(bearer_of(request.headers.get("authorization", "")), credentials.operator):
                raise ClientError(401, "the operator's credential is required", "authentication_error", "unauthorized")
            return await handler(request)

        return check

    return wrap


def hive_only(credentials: FleetCredentials) -> Callable[[Handler], Handler]:
    """The guard of `/v2/hives/{name}/...`: the credential of hive `name` and no other."""

    def wrap(handler: Handler) -> Handler:
        async def check(request: Request) -> Response:
            given = bearer_of(request.headers.get("authorization", ""))
            if not matches(given, credentials.hive(request.path_params["name"])):
                raise ClientError(
                    403, "only that hive's own credential may speak for it", "permission_error", "wrong_hive"
                )
            return await handler(request)

        return check

    return wrap
