"""A routing policy file (`queen.routing: route.py`): a Python module that defines `route(request, candidates)`.

The operator's own code, run by the queen to pick a worker; loading it here checks that it can be used at all.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

UserPolicy = Callable[[dict[str, Any], list[dict[str, Any]]], Any]


class PolicyError(ValueError):
    """A routing policy file that cannot be used; the message says what is wrong."""


def load_user_policy(source: str, name: str) -> UserPolicy:
    module = types.ModuleType("rbee_user_policy")
    try:
        exec(compile(source, name, "exec"), module.__dict__)  # the operator's own policy file
    except Exception as error:
        raise PolicyError(f"{name} does not load: {type(error).__name__}: {error}") from None
    route = getattr(module, "route", None)
    if not callable(route):
        raise PolicyError(f"{name} defines no function route(request, candidates)")
    code = getattr(route, "__code__", None)
    if code is not None and code.co_argcount != 2:
        raise PolicyError(f"{name}: route must take exactly two arguments (request, candidates)")
    return route  # type: ignore[no-any-return]
