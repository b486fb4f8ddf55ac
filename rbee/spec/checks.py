"""Rules across hive.yaml's sections: names are unique, workers name models and hives that exist, each
worker's backend can run its model, no two hives claim one address.

Each problem is a location in the document (as pydantic writes locations) and one sentence.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

from rbee.spec import backends
from rbee.spec.backends import Backend, ModelKind
from rbee.spec.schema import HiveFile, HiveSpec, ModelSpec, WorkerSpec
from rbee.spec.source import ModelFormat, SourceKind, parse_source

Location = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Problem:
    location: Location
    message: str


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def check(spec: HiveFile) -> list[Problem]:
    if not spec.hives:
        return [Problem(("hives",), "no hives are defined; add at least one, e.g. {name: local}")]
    return [
        *_unique_names("hives", [hive.name for hive in spec.hives]),
        *_unique_names("models", [model.name for model in spec.models]),
        *_unique_names("providers", [provider.name for provider in spec.providers]),
        *_provider_models(spec),
        *_unique_addresses(spec),
        *_api_key_scopes(spec),
        *_open_queen(spec),
        *_projectors(spec),
        *_workers(spec),
    ]


def _projectors(spec: HiveFile) -> Iterator[Problem]:
    """A multimodal projector belongs to a GGUF text model: llama.cpp is the engine that reads one."""
    for index, model in enumerate(spec.models):
        if model.mmproj is None:
            continue
        if model.kind is not ModelKind.TEXT or model.resolved_format is not ModelFormat.GGUF:
            yield Problem(
                ("models", index, "mmproj"),
                f"model '{model.name}' is a {model.resolved_format} {model.kind} model; mmproj (a multimodal "
                "projector) goes with a GGUF text model only, so remove it or point source at a .gguf file",
            )


def _unique_names(section: str, names: list[str]) -> Iterator[Problem]:
    first: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in first:
            yield Problem(
                (section, index, "name"),
                f"the name '{name}' is already used by {section}[{first[name]}]; names must be unique",
            )
        first.setdefault(name, index)


def _unique_addresses(spec: HiveFile) -> Iterator[Problem]:
    seen: dict[tuple[str, str], str] = {}
    names: set[str] = set()
    local_dirs: dict[str, str] = {}
    for index, hive in enumerate(spec.hives):
        if hive.name in names:
            continue  # reported as a duplicate name already
        names.add(hive.name)
        machine = "this machine" if hive.ssh is None else f"{hive.ssh.host}"
        port = hive.listen_address.rpartition(":")[2]
        key = (machine, port)
        if key in seen:
            yield Problem(
                ("hives", index, "listen"),
                f"hive '{hive.name}' would listen on port {port} of {machine} like hive '{seen[key]}'; "
                "give one of them another listen port",
            )
        seen.setdefault(key, hive.name)
        if hive.ssh is None:
            data = hive.data_path
            if data in local_dirs:
                yield Problem(
                    ("hives", index, "data_dir"),
                    f"hive '{hive.name}' would share the data dir {data} with hive '{local_dirs[data]}' on this "
                    "machine; give it its own data_dir",
                )
            local_dirs.setdefault(data, hive.name)


def _provider_models(spec: HiveFile) -> Iterator[Problem]:
    """A model served here and by a provider is one model: the same kind on both sides."""
    local = {model.name: model for model in spec.models}
    for index, provider in enumerate(spec.providers):
        for model_index, offered in enumerate(provider.models or ()):
            own = local.get(offered.name)
            if own is not None and own.kind is not offered.kind:
                yield Problem(
                    ("providers", index, "models", model_index),
                    f"provider '{provider.name}' offers '{offered.name}' as {article(offered.kind)} {offered.kind} "
                    f"model, and models: has it as {article(own.kind)} {own.kind} model; give it the same kind",
                )


def _api_key_scopes(spec: HiveFile) -> Iterator[Problem]:
    known = {model.name for model in spec.models}
    known |= {model.name for provider in spec.providers for model in provider.models or ()}
    for key_index, key in enumerate(spec.queen.api_keys):
        for model_index, name in enumerate(key.models or ()):
            if name not in known:
                yield Problem(
                    ("queen", "api_keys", key_index, "models", model_index),
                    f"API key {key.env} is scoped to unknown model '{name}'{did_you_mean(name, known)}",
                )


def _open_queen(spec: HiveFile) -> Iterator[Problem]:
    host = spec.queen.listen.rpartition(":")[0].strip("[]")
    if spec.queen.auth == "none" and host not in ("127.0.0.1", "::1", "localhost"):
        yield Problem(
            ("queen", "auth"),
            f"auth: none would serve anyone who can reach {spec.queen.listen}; use it only with a loopback listen "
            "address (127.0.0.1), or remove it: clients then need an API key (rbee key shows the admin key)",
        )


def _workers(spec: HiveFile) -> Iterator[Problem]:
    models = {model.name: model for model in spec.models}
    hives = {hive.name: hive for hive in spec.hives}
    seen: dict[tuple[str, str, str, str], int] = {}
    for index, worker in enumerate(spec.workers):
        model = models.get(worker.model)
        if model is None:
            hint = did_you_mean(worker.model, models) or f"; define it under models: (known: {_names(models)})"
            yield Problem(("workers", index, "model"), f"unknown model '{worker.model}'{hint}")
        hive = hives.get(worker.hive)
        if hive is None:
            hint = did_you_mean(worker.hive, hives) or f"; define it under hives: (known: {_names(hives)})"
            yield Problem(("workers", index, "hive"), f"unknown hive '{worker.hive}'{hint}")
        key = (worker.model, worker.hive, str(worker.backend), worker.device)
        if key in seen:
            yield Problem(
                ("workers", index),
                f"workers[{seen[key]}] already runs model '{worker.model}' on hive '{worker.hive}' with the "
                "same backend and device; merge the two entries into one replica count",
            )
        seen.setdefault(key, index)
        if model is not None:
            yield from _backend_fits(index, worker, model)
        if model is not None and hive is not None and hive.model_dirs is not None:
            yield from _model_dir_fits(index, hive, model, spec)
        pinned = hive.backends if hive is not None and hive.backends != "auto" else None
        if pinned is not None and worker.backend != "auto" and worker.backend not in pinned:
            names = ", ".join(str(backend) for backend in pinned)
            yield Problem(
                ("workers", index, "backend"),
                f"hive '{worker.hive}' pins backends [{names}]; add {worker.backend} there or use one of them",
            )


def _model_dir_fits(index: int, hive: HiveSpec, model: ModelSpec, spec: HiveFile) -> Iterator[Problem]:
    for text in (model.source, model.mmproj):
        source = parse_source(text) if text is not None else None
        if source is None or source.kind is not SourceKind.FILE or under_any(source.location, spec.model_dirs(hive)):
            continue
        folders = ", ".join(spec.model_dirs(hive)) or "none"
        yield Problem(
            ("workers", index, "hive"),
            f"model '{model.name}' is {source.location}, outside hive '{hive.name}''s model_dirs ({folders}); add "
            "its folder to that hive's model_dirs or move the file",
        )


def under_any(path: str, roots: Iterable[str]) -> bool:
    """Whether `path` is one of `roots` or inside one (as text: the hive checks real paths again)."""
    parts = PurePosixPath(path).parts
    return any(parts[: len(PurePosixPath(root).parts)] == PurePosixPath(root).parts for root in roots)


def _backend_fits(index: int, worker: WorkerSpec, model: ModelSpec) -> Iterator[Problem]:
    if worker.backend == "auto":
        return
    backend = Backend(worker.backend)
    if model.kind is ModelKind.EMBEDDING and backend is not Backend.EMBED:
        yield Problem(
            ("workers", index, "backend"),
            f"model '{model.name}' is an embedding model and runs only on the embed backend, not {backend}",
        )
        return
    if model.kind is ModelKind.TEXT and backend is Backend.EMBED:
        yield Problem(
            ("workers", index, "backend"),
            f"the embed backend serves embedding models, and '{model.name}' is a text model; "
            "use auto, or set kind: embedding on the model",
        )
        return
    served = backends.TABLE[backend].kind
    if served is not model.kind:
        yield Problem(
            ("workers", index, "backend"),
            f"the {backend} backend serves {served} models, and '{model.name}' is {article(model.kind)} {model.kind} "
            "model; "
            f"use auto, or set kind: {served} on the model",
        )
        return
    fmt = model.resolved_format
    if backend not in backends.loads(fmt):
        allowed = ", ".join(sorted(backends.loads(fmt)))
        yield Problem(
            ("workers", index, "backend"),
            f"model '{model.name}' is {fmt} and the {backend} backend cannot load it; use auto or one of: {allowed}",
        )


def _names(items: Iterable[str]) -> str:
    names = ", ".join(items)
    return names or "none yet"


def article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"
