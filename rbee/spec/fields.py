"""The value types of hive.yaml's fields: names, durations, listen addresses and paths, each with the one
sentence its refusal gives. The models that use them are in `schema`."""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, StringConstraints, WithJsonSchema

DNS_LABEL = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"

Name = Annotated[str, StringConstraints(pattern=DNS_LABEL)]
"""A DNS label: lowercase letters, digits and hyphens, 1-63 characters, no hyphen at either end."""

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def _parse_duration(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '30s', '5m', '1h'")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if not match:
            raise ValueError(f"'{value}' is not a duration; write seconds or a string like '30s', '5m', '1h'")
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return value


Seconds = Annotated[
    float,
    Field(ge=0),
    BeforeValidator(_parse_duration),
    WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": _DURATION.pattern}]}),
]


def _check_address(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"'{value}' is not a listen address; write host:port, e.g. 127.0.0.1:9200")
    return value


Address = Annotated[str, BeforeValidator(_check_address)]


_HOMES = ("/home", "/Users", "/var/home")


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    return host == "localhost" or host.startswith("127.") or host == "::1"


def check_data_dir(value: Any) -> Any:
    """A data dir is rbee's alone (install makes it mode 700, uninstall empties it), so it must be a folder of its
    own: absolute or under ~, and never a home, `/` or a top-level dir like /opt."""
    if not isinstance(value, str):
        return value
    if any(ord(char) < 32 for char in value):
        raise ValueError("a data_dir must not contain control characters or newlines")
    parts = [part for part in value.split("/") if part]
    if value.startswith("~/") or value == "~":
        below = parts[1:]
        if not below:
            raise ValueError(f"'{value}' is a home directory; give rbee a folder of its own, like ~/rbee")
    elif value.startswith("/"):
        below = parts
        if len(below) < 2:
            raise ValueError(f"'{value}' is / or a top-level dir; give rbee a folder of its own, like /srv/rbee")
        if (len(below) == 2 and "/" + below[0] in _HOMES) or below == ["root"]:
            raise ValueError(f"'{value}' is a home directory; give rbee a folder inside it, like {value}/rbee")
    else:
        raise ValueError(f"'{value}' is not absolute; write a path like /srv/rbee or ~/rbee")
    if any(part in (".", "..") for part in below):
        raise ValueError(f"'{value}' has a '.' or '..' component; write the path plainly")
    return value


def check_model_dir(value: Any) -> Any:
    if isinstance(value, str) and not (value.startswith("/") or value.startswith("~/")):
        raise ValueError(f"'{value}' is not absolute; write a folder like /srv/models or ~/models")
    if isinstance(value, str) and (value.rstrip("/") in ("", "~") or any(ord(char) < 32 for char in value)):
        raise ValueError(f"'{value}' would let the hive read any file; name the folder that holds the models")
    return value


def check_service_user(value: Any) -> Any:
    if isinstance(value, str) and re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", value) is None:
        raise ValueError(
            f"'{value}' is not a user name a host accepts; write lower-case letters, digits, '_' or '-' "
            "(at most 32), like rbee"
        )
    return value


def refuse_inline_key(value: Any) -> Any:
    if isinstance(value, str):
        raise ValueError("API keys are never written inline; write {env: VARIABLE_NAME} and export the key there")
    return value


ROUTINGS = ("prefix", "least-loaded", "round-robin")


def check_routing(value: Any) -> Any:
    if isinstance(value, str) and value not in ROUTINGS and not value.endswith(".py"):
        raise ValueError(
            f"'{value}' is not a routing policy; use prefix, least-loaded, round-robin or a path to a .py file"
        )
    if isinstance(value, str) and value.endswith(".py") and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.py", value):
        raise ValueError(
            f"'{value}': a routing policy file sits beside hive.yaml; write its file name only, like route.py"
        )
    return value


def check_store(value: Any) -> Any:
    """A PostgreSQL URL without a password: it is passed to the queen's process as an argument."""
    if not isinstance(value, str):
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise ValueError(f"'{value}' is not a postgresql://user@host:port/database URL")
    if parts.password:
        raise ValueError("the store's URL holds a password; put it in ~/.pgpass or PGPASSWORD on the queen's machine")
    return value
