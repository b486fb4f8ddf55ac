"""Running one of rbee's pyinfra operations on a recorded host, as pyinfra's own operation tests do: the host's
facts come from a case file, and the operation's commands (or its no-op sentence, or its refusal) are compared
with what the case expects. rbee's own facts are given as the output their command printed on a real host, and
go through the fact's real parser; pyinfra's facts (files.File, files.Sha1File, ...) are given as values, by
path, and are absent unless given."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from pyinfra.api.command import FileUploadCommand, StringCommand
from pyinfra.context import ctx_host, ctx_state

from rbee.infra import facts


class UnknownFact(AssertionError):
    """The operation asked for an rbee fact the case does not record."""


class RecordedHost:
    def __init__(self, name: str, data: dict[str, Any], recorded: dict[str, Any]) -> None:
        self.name = name
        self.data = data
        self.recorded = recorded
        self.noops: list[str] = []
        self.asked: list[str] = []
        self.current_op_global_arguments: dict[str, Any] = {}

    def get_fact(self, fact: type, **kwargs: Any) -> Any:
        name = fact.__name__
        if fact.__module__ == facts.__name__:
            if name not in self.recorded:
                raise UnknownFact(f"the operation asked for {name}({kwargs}), which the case does not record")
            self.asked.append(name)
            instance = fact()
            instance.command(**kwargs)  # the fact can be asked with these arguments
            return instance.process(list(self.recorded[name]))
        key = f"{fact.__module__.removeprefix('pyinfra.facts.')}.{name}"
        by_path = self.recorded.get(key, {})
        return by_path.get(str(kwargs.get("path")))

    def noop(self, description: str) -> None:
        self.noops.append(description)

    def get_temp_filename(self, *args: Any, **kwargs: Any) -> str:
        return "/tmp/pyinfra-upload"

    def log(self, *args: Any, **kwargs: Any) -> None:
        pass


class _Config:
    DIFF = False


class RecordedState:
    cwd = None
    config = _Config()


def command_text(command: Any) -> str:
    if isinstance(command, FileUploadCommand):
        return f"upload {command.dest}"
    if isinstance(command, StringCommand):
        return str(command.get_raw_value())
    assert isinstance(command, str), command
    return command


def run(operation: Callable[..., Iterable[Any]], host: RecordedHost, args: dict[str, Any]) -> list[str]:
    with ctx_host.use(host), ctx_state.use(RecordedState()):
        return [command_text(command) for command in operation._inner(**args)]  # type: ignore[attr-defined]
