"""A routing policy file (`queen.routing: route.py`, beside hive.yaml): a Python module that defines
`route(request, candidates)`.

It is the operator's own code, and it never travels as code: the keeper checks it by parsing it (never running
it: validating someone's hive.yaml must not run their code), copies it into the queen's own state directory on
the operator's machine, and names it to the queen by its sha256. The queen runs only a file it finds there with
that digest. No I/O here: the callers read and write the files.
"""

from __future__ import annotations

import ast
import hashlib
import types
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

UserPolicy = Callable[[dict[str, Any], list[dict[str, Any]]], Any]
MAX_BYTES = 256 << 10


class PolicyError(ValueError):
    """A routing policy file that cannot be used; the message says what is wrong."""


class PolicyRef(BaseModel):
    """How the keeper names a policy to the queen: its file name (for messages) and the digest of its text."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,128}\.py$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @property
    def file_name(self) -> str:
        """Its name in the queen's policy directory: the digest, so a file is found only by its content."""
        return f"{self.sha256}.py"


def ref(source: str, name: str) -> PolicyRef:
    return PolicyRef(name=name, sha256=digest(source))


def digest(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


def check(source: str, name: str) -> None:
    """Whether `source` can be a policy, by reading it only: it parses, and defines at its top level
    `route(request, candidates)` with exactly two positional parameters."""
    if len(source.encode()) > MAX_BYTES:
        raise PolicyError(f"{name} is larger than {MAX_BYTES >> 10} KiB; a routing policy is one small function")
    try:
        module = ast.parse(source, name)
    except (SyntaxError, ValueError) as error:
        raise PolicyError(f"{name} does not load: {type(error).__name__}: {error}") from None
    routes = [node for node in module.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)]
    route = next((node for node in routes if node.name == "route"), None)
    if route is None:
        raise PolicyError(f"{name} defines no function route(request, candidates)")
    arguments = route.args
    if (
        isinstance(route, ast.AsyncFunctionDef)
        or len(arguments.posonlyargs) + len(arguments.args) != 2
        or arguments.vararg
        or arguments.kwonlyargs
    ):
        raise PolicyError(f"{name}: route must take exactly two arguments (request, candidates)")


def load_user_policy(source: str, name: str) -> UserPolicy:
    """The policy's route(), by running the module: only the queen does this, with a file from its own disk."""
    check(source, name)
    module = types.ModuleType("rbee_user_policy")
    try:
        exec(compile(source, name, "exec"), module.__dict__)  # the operator's own policy file, from the queen's disk
    except Exception as error:
        raise PolicyError(f"{name} does not load: {type(error).__name__}: {error}") from None
    route = getattr(module, "route", None)
    if not callable(route):
        raise PolicyError(f"{name} defines no function route(request, candidates)")
    return route  # type: ignore[no-any-return]
