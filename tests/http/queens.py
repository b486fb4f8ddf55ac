"""The credentials of the queens the in-process tests build, and the headers that carry them."""

from __future__ import annotations

from pathlib import Path

from rbee.api.credentials import FleetCredentials

CREDENTIALS = FleetCredentials("rbo_the-operators-credential-of-the-tests", "the fleet key of the tests, never leaves")
OPERATOR = {"Authorization": f"Bearer {CREDENTIALS.operator}"}
ADMIN_KEY = "rbk_the-admin-api-key-of-the-in-process-tests"
KEYED = {"Authorization": f"Bearer {ADMIN_KEY}"}
BASE_URL = "http://127.0.0.1"
"""TestClient's default host name, testserver, is not one the queen answers to."""


def admin_key_file(folder: Path) -> Path:
    path = folder / "admin.key"
    path.write_text(ADMIN_KEY)
    return path


def hive_auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {CREDENTIALS.hive(name)}"}
