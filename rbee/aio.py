"""Running a daemon's event loop: uvloop where it is installed (it comes with uvicorn[standard]), else asyncio.
uvloop cut the relay's CPU per token by a quarter to a third on this kind of machine (FACTS.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
