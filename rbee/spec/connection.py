"""How the keeper reaches a hive, as hive.yaml says it: `local`, or `ssh: {host, port, user, key, host_key_policy,
known_hosts}`; and the strict base of every hive.yaml model (no unknown field, frozen)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StringConstraints, Tag


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HostKeyPolicy(StrEnum):
    STRICT = "strict"
    ACCEPT_NEW = "accept-new"


class SshConnection(Strict):
    host: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]+$", max_length=253)]
    port: Annotated[int, Field(ge=1, le=65535)] = 22
    user: Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")] | None = None
    key: str | None = Field(default=None, description="Private key path; omitted means the SSH agent.")
    host_key_policy: HostKeyPolicy = HostKeyPolicy.STRICT
    known_hosts: str | None = Field(default=None, description="known_hosts file; defaults to ~/.ssh/known_hosts.")


class SshBlock(Strict):
    ssh: SshConnection


LOCAL: Literal["local"] = "local"


def _connection_tag(value: Any) -> str | None:
    if value == LOCAL:
        return "local"
    return "ssh-connection" if isinstance(value, dict | SshBlock) else None


Connection = Annotated[
    Annotated[Literal["local"], Tag("local")] | Annotated[SshBlock, Tag("ssh-connection")],
    Discriminator(
        _connection_tag,
        custom_error_type="connection",
        custom_error_message="connection is 'local' or a mapping 'ssh: {host: ...}'",
    ),
]
