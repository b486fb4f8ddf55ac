"""Shell words for paths from hive.yaml: always quoted, with a leading `~/` meaning the target user's home."""

from __future__ import annotations

import shlex


def path(value: str) -> str:
    """A shell word for `value`; `~/x` becomes `"$HOME"/x` so the home of the user on the target is used."""
    if value == "~":
        return '"$HOME"'
    if value.startswith("~/"):
        return '"$HOME"/' + shlex.quote(value[2:])
    return shlex.quote(value)
