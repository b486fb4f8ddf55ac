"""Read hive.yaml into a `HiveFile`, or fail with one sentence per problem naming file, line, column and field.

A file that fails to load changes nothing: loading is the first step of every command and has no effects.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import yaml

from rbee.spec import checks, fields, schema

Location = checks.Location

MAX_BYTES = 1 << 20
"""hive.yaml describes machines and models; a real one is a few KiB, so 1 MiB is room enough and a bound."""
MAX_DEPTH = 64
MAX_NODES = 100_000


class SpecError(Exception):
    """hive.yaml cannot be used; `problems` holds one finished sentence per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class _Place:
    key: yaml.Mark | None
    value: yaml.Node


def load(path: str | Path) -> schema.HiveFile:
    path = Path(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise SpecError([_too_big(str(path))])
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([f"{path}: no such file; pass the path of a hive.yaml (see hive.yaml.example)."]) from None
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError([f"{path}: cannot be read ({error})."]) from None
    return loads(text, str(path))


def loads(text: str, filename: str = "hive.yaml") -> schema.HiveFile:
    if len(text) > MAX_BYTES or len(text.encode("utf-8", "replace")) > MAX_BYTES:
        raise SpecError([_too_big(filename)])
    places, data = _parse_yaml(text, filename)
    try:
        spec = schema.HiveFile.model_validate(data)
    except pydantic.ValidationError as error:
        raise SpecError([_validation_sentence(filename, places, item) for item in error.errors()]) from None
    problems = checks.check(spec)
    if problems:
        raise SpecError([_sentence(filename, places, p.location, p.message, at_key=False) for p in problems])
    return spec


def _too_big(filename: str) -> str:
    return f"{filename}: the file is larger than {MAX_BYTES >> 20} MiB; a hive.yaml is a few KiB, check the path."


class _Refused(yaml.MarkedYAMLError):
    """A document rbee will not compose; `problem` is the whole sentence."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors and aliases (one alias can stand for a billion nodes: the 'billion laughs'
    of YAML) and stops at MAX_DEPTH levels and MAX_NODES nodes, so composing costs at most what the text is."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused(
                problem="YAML anchors and aliases (&name, *name, <<: *name) are not accepted; write each value out",
                problem_mark=event.start_mark,
            )
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _Refused(problem=f"the document has more than {MAX_NODES} values", problem_mark=event.start_mark)
        nested = isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent)
        if nested:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise _Refused(problem=f"values nest deeper than {MAX_DEPTH} levels", problem_mark=event.start_mark)
        try:
            return super().compose_node(parent, index)
        finally:
            if nested:
                self._depth -= 1


def _parse_yaml(text: str, filename: str) -> tuple[dict[Location, _Place], Any]:
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise SpecError([f"{filename}: the file is empty; start from hive.yaml.example."])
        places: dict[Location, _Place] = {}
        duplicate = _index(node, (), None, places)
        if duplicate:
            raise SpecError([duplicate.format(filename=filename)])
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as error:
        raise SpecError([_yaml_sentence(filename, error)]) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise SpecError([f"{filename}:1:1: the top level must be a mapping with hives:, models: and workers:."])
    return places, data


def _yaml_sentence(filename: str, error: yaml.MarkedYAMLError) -> str:
    mark = error.problem_mark or error.context_mark
    where = f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark else filename
    if isinstance(error, _Refused):
        return f"{where}: {error.problem}."
    problem = error.problem or "invalid YAML"
    if "'\\t'" in problem:
        return f"{where}: a tab character is used for indentation; YAML indents with spaces only."
    context = f" ({error.context})" if error.context else ""
    return f"{where}: invalid YAML: {problem}{context}."


def _index(node: yaml.Node, loc: Location, key: yaml.Mark | None, places: dict[Location, _Place]) -> str | None:
    """Record where each location's key and value are; return a sentence about a duplicate key, if any."""
    places[loc] = _Place(key, node)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, yaml.Mark] = {}
        for key_node, value_node in node.value:
            name = str(key_node.value)
            if name in seen:
                first = seen[name].line + 1
                mark = key_node.start_mark
                return (
                    f"{{filename}}:{mark.line + 1}:{mark.column + 1}: {_field((*loc, name))}: "
                    f"the key '{name}' appears twice (first on line {first}); keep one."
                )
            seen[name] = key_node.start_mark
            found = _index(value_node, (*loc, name), key_node.start_mark, places)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found = _index(item, (*loc, index), None, places)
            if found:
                return found
    return None


def _field(loc: Location) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or "(top level)"


def _sentence(filename: str, places: dict[Location, _Place], loc: Location, message: str, *, at_key: bool) -> str:
    probe = loc
    while probe not in places and probe:
        probe = probe[:-1]
    place = places.get(probe)
    mark = None
    if place is not None:
        mark = place.key if (at_key and probe == loc and place.key) else place.value.start_mark
    where = f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark else filename
    message = message.rstrip(".?") + ("?" if message.endswith("?") else ".")
    return f"{where}: {_field(loc)}: {message}"


def _validation_sentence(filename: str, places: dict[Location, _Place], item: Any) -> str:
    loc: Location = tuple(part for part in item["loc"] if part not in schema.UNION_TAGS)
    kind = item["type"]
    if kind == "extra_forbidden":
        name = str(loc[-1])
        hint = checks.did_you_mean(name, _fields_of(loc[:-1]))
        return _sentence(filename, places, loc, f"unknown field '{name}'{hint}", at_key=True)
    if kind == "missing":
        return _sentence(filename, places, loc, f"the required field '{loc[-1]}' is missing", at_key=False)
    return _sentence(filename, places, loc, _describe(item), at_key=False)


def _describe(item: Any) -> str:
    kind, message, given = item["type"], str(item["msg"]), item.get("input")
    if kind == "value_error":
        return message.removeprefix("Value error, ")
    if kind == "connection":
        return f"{message}, not {given!r}"
    if kind == "string_pattern_mismatch" and item.get("ctx", {}).get("pattern") == fields.DNS_LABEL:
        return f"'{given}' is not a valid name; use lowercase letters, digits and hyphens (a DNS label)"
    if kind == "string_pattern_mismatch" and item.get("ctx", {}).get("pattern") == fields.ENV_NAME:
        return f"'{given}' is not an environment variable name"
    text = message[0].lower() + message[1:]
    if isinstance(given, dict | list):
        return text
    return f"{text}, not {given!r}"


def _fields_of(loc: Location) -> list[str]:
    """The field names a mapping at `loc` accepts, for did-you-mean hints."""
    model: type[pydantic.BaseModel] | None = schema.HiveFile
    for part in loc:
        if model is None:
            return []
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        model = _model_in(field.annotation) if field else None
    return list(model.model_fields) if model else []


def _model_in(annotation: Any) -> type[pydantic.BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found:
                return found
    return None
