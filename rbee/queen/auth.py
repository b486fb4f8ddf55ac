"""Who may call the queen's client APIs: API keys, read from the environment variables hive.yaml names,
optionally scoped to models and limited in concurrency. (The operator and hive APIs take the cluster token:
`daemon.token_guard`.)"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.requests import Request

from rbee.queen.errors import ClientError
from rbee.spec.schema import HiveFile

log = logging.getLogger("rbee.queen")


@dataclass(frozen=True, slots=True)
class Key:
    name: str
    """The environment variable it came from: what the request log and metrics call it."""
    models: tuple[str, ...] | None
    max_concurrent: int | None


class ApiKeys:
    def __init__(self) -> None:
        self.keys: dict[str, Key] = {}
        self.required = False
        """Keys are configured (even if none of their variables is set): every client request needs one."""

    def configure(self, spec: HiveFile, environ: Mapping[str, str] = os.environ) -> None:
        keys: dict[str, Key] = {}
        for ref in spec.queen.api_keys:
            value = environ.get(ref.env)
            if value:
                keys[value] = Key(ref.env, ref.models, ref.max_concurrent)
            else:
                log.warning("API key variable %s is not set in the queen's environment; that key is refused", ref.env)
        self.keys, self.required = keys, bool(spec.queen.api_keys)

    def authorize(self, request: Request, model: str | None) -> Key | None:
        """The key the request carries (None when the queen needs none); 401 without a valid one, 403 when it
        may not use `model`."""
        if not self.required:
            return None
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip().encode()
        for value, key in self.keys.items():
            if hmac.compare_digest(given, value.encode()):
                if model is not None and key.models is not None and model not in key.models:
                    raise ClientError(
                        403, f"this API key may not use model {model}", "permission_error", "model_not_allowed", "model"
                    )
                return key
        raise ClientError(
            401,
            "a valid API key is required: send Authorization: Bearer <key>",
            "authentication_error",
            "invalid_api_key",
        )
