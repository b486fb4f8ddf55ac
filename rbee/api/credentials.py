"""One credential per role, derived so that each opens only its own holder's endpoints. No I/O here.

- The operator's credential: random, kept in RBEE_HOME on the operator's machine; the only key to the queen's
  operator API.
- The fleet key: random, kept in RBEE_HOME beside it; never leaves the operator's machine. Each hive's credential
  is derived from it and the hive's name, so the queen can check that a heartbeat comes from the hive it names,
  and can call each hive with that hive's credential, without storing any of them.
- A worker's credential is derived by its hive from the hive's own credential and the worker's id: it opens only
  that worker (and that worker's reports to its hive). The queen derives it the same way to reach the worker.

Derivation is HMAC-SHA256; a credential is the role's prefix and 43 URL-safe characters.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

MIN_LENGTH = 32
"""Credentials read from a file shorter than this are refused (an empty or truncated file is not a secret)."""


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def _derive(secret: str, role: str, name: str) -> str:
    digest = hmac.new(secret.encode(), f"rbee/{role}/{name}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def hive_credential(fleet_key: str, hive: str) -> str:
    return "rbh_" + _derive(fleet_key, "hive", hive)


def worker_credential(hive_credential: str, worker_id: str) -> str:
    return "rbw_" + _derive(hive_credential, "worker", worker_id)


def matches(given: str, expected: str) -> bool:
    """Constant-time comparison of a presented credential with the expected one."""
    return hmac.compare_digest(given.encode(), expected.encode())


def bearer_of(authorization: str) -> str:
    """The credential an `Authorization: Bearer ...` header carries ('' for none)."""
    scheme, _, value = authorization.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def usable(value: str) -> bool:
    return len(value) >= MIN_LENGTH and value.isprintable() and " " not in value


class FleetCredentials:
    """What the operator's machine holds (the keeper, and the queen beside it): the operator's credential and the
    fleet key, from which every hive's and worker's credential is derived."""

    def __init__(self, operator: str, fleet_key: str) -> None:
        self.operator = operator
        self.fleet_key = fleet_key
        self._hives: dict[str, str] = {}

    def hive(self, name: str) -> str:
        found = self._hives.get(name)
        if found is None:
            found = self._hives[name] = hive_credential(self.fleet_key, name)
        return found

    def worker(self, hive: str, worker_id: str) -> str:
        return worker_credential(self.hive(hive), worker_id)

    def __repr__(self) -> str:
        return "FleetCredentials(<secret>)"
