"""The hive.yaml schema: pydantic models that reject unknown keys and describe themselves as JSON Schema.

Field-level rules live here; rules that span sections (a worker naming a model) live in `checks`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    field_validator,
    model_validator,
)

from rbee.api.state import WorkerGroup, WorkerShape
from rbee.spec import source as source_mod
from rbee.spec.backends import Backend, ModelKind
from rbee.spec.connection import LOCAL, Connection, SshBlock, SshConnection, Strict
from rbee.spec.fields import (
    ENV_NAME,
    Address,
    Name,
    Seconds,
    check_data_dir,
    check_model_dir,
    check_routing,
    check_service_user,
    check_store,
    is_loopback,
    refuse_inline_key,
)
from rbee.spec.providers import Federation, ProviderSpec, RoutePreferences


class ApiKeyRef(Strict):
    """An API key the queen accepts, read at start from an environment variable; never written inline."""

    env: Annotated[str, StringConstraints(pattern=ENV_NAME)] = Field(
        description="Name of the environment variable that holds the key."
    )
    models: tuple[Name, ...] | None = Field(
        default=None, description="Models this key may use; omitted means all models."
    )
    max_concurrent: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="Requests this key may have in flight or queued at once (429 past it)."
    )
    routing: RoutePreferences | None = Field(
        default=None, description="How this key's requests choose among this fleet and its providers by default."
    )


class QueenSpec(Strict):
    listen: Address = "127.0.0.1:8080"
    reconcile_interval: Seconds = 30.0
    heartbeat_interval: Seconds = 30.0
    api_keys: tuple[Annotated[ApiKeyRef, BeforeValidator(refuse_inline_key)], ...] = ()
    routing: Annotated[str, BeforeValidator(check_routing)] = Field(
        default="prefix",
        description="prefix (requests that begin alike go to the replica likely to hold that beginning in its "
        "cache, within a bounded load), least-loaded, round-robin, or the name of a Python file beside hive.yaml "
        "defining route(request, candidates) -> candidate.",
    )
    max_queue: Annotated[int, Field(ge=0, le=1_000_000)] = Field(
        default=256, description="Requests that may wait per model; past it the queen answers 503."
    )
    queue_timeout: Seconds = Field(default=30.0, description="How long a request may wait for a worker (504).")
    stream_idle_timeout: Seconds = Field(
        default=60.0,
        description="A stream whose worker sends nothing this long (workers send keep-alives while they read a long "
        "prompt) ends with an error, and its slot is freed.",
    )
    max_body_bytes: Annotated[int, Field(ge=1024)] = Field(default=4 << 20, description="Larger bodies get 413.")
    auth: Literal["keys", "none"] = Field(
        default="keys",
        description="keys: every client request needs an API key (the admin key `rbee key` shows, or one of "
        "api_keys). none: anyone who can reach the queen may use it; allowed only on a loopback listen address.",
    )
    allowed_hosts: tuple[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9.-]{1,253}$")], ...] = Field(
        default=(),
        description="Host names clients may use to reach the queen, besides IP addresses and localhost (a browser "
        "page on another name is refused: DNS rebinding).",
    )
    cors_origins: tuple[Annotated[str, StringConstraints(pattern=r"^https?://[A-Za-z0-9.:\[\]-]+$")], ...] = Field(
        default=(), description="Web origins whose pages may call the queen from a browser; none by default."
    )
    store: Annotated[str, BeforeValidator(check_store)] | None = Field(
        default=None,
        description="postgresql://user@host:port/db: the queen's state in PostgreSQL, so that several queens share it "
        "(one reconciles at a time, all serve); its password in ~/.pgpass or PGPASSWORD, never in the URL. "
        "Omitted: SQLite in the queen's state directory.",
    )
    lease: Seconds = Field(
        default=10.0, description="With a shared store: how long a leading queen's lease lasts without renewal."
    )
    peers: tuple[Annotated[str, StringConstraints(pattern=r"^https?://[A-Za-z0-9.\[\]:-]+$")], ...] = Field(
        default=(), description="The other queens on the same store (their URLs): rbee's commands try them in turn."
    )
    federation: Federation = Field(
        default=Federation(), description="Providers: what this fleet's own workers cost, the margin, retries."
    )


def queen_tls(queen: QueenSpec) -> bool:
    """The queen serves TLS when it listens off loopback: hives' heartbeats then cross a network."""
    return not is_loopback(queen.listen.rpartition(":")[0])


UNION_TAGS = frozenset({"local", "ssh-connection", "auto", "pinned"})
"""Tags of hive.yaml's tagged unions; they appear in validation locations and are not field names."""


def _backends_tag(value: Any) -> str:
    return "auto" if isinstance(value, str) else "pinned"


Backends = Annotated[
    Annotated[Literal["auto"], Tag("auto")] | Annotated[tuple[Backend, ...], Tag("pinned")],
    Discriminator(_backends_tag),
]


class HiveSpec(Strict):
    name: Name
    connection: Connection = LOCAL
    backends: Backends = "auto"
    listen: Address | None = Field(
        default=None,
        description="Where the hive daemon listens; defaults to 127.0.0.1:9200 (local) or 0.0.0.0:9200 (ssh).",
    )
    data_dir: Annotated[str, BeforeValidator(check_data_dir)] | None = Field(
        default=None,
        description="rbee's folder on the hive (absolute or ~/..., never a home or top-level dir); defaults to "
        "~/.local/share/rbee/hives/NAME. An existing folder must be empty or one rbee made.",
    )
    transport: Literal["auto", "tls"] = Field(
        default="auto",
        description="auto: the hive and its workers serve TLS (certificates from the fleet CA in RBEE_HOME) "
        "whenever they listen off loopback, which an SSH hive always does, and plain HTTP on this machine's "
        "loopback. tls: always TLS.",
    )
    model_dirs: tuple[Annotated[str, BeforeValidator(check_model_dir)], ...] | None = Field(
        default=None,
        description="The folders on the hive that file:// models may come from; the hive refuses any other path. "
        "Omitted: exactly the file:// models that workers place on this hive.",
    )
    python: str | None = Field(
        default=None,
        description="A Python on the hive that has this version of rbee installed (with the backends' extras); "
        "the hive daemon and its workers run with it. Omitted on an SSH hive: rbee makes a virtualenv in the "
        "data dir and installs itself there from a wheel it uploads.",
    )
    wheelhouse: str | None = Field(
        default=None,
        description="A folder of wheels on this machine to install rbee's dependencies from, for hives that "
        "cannot reach a package index.",
    )
    service: Literal["auto", "systemd", "process"] = Field(
        default="auto",
        description="How the hive daemon runs: `systemd` as a unit (a system unit when rbee connects as root, a "
        "user unit otherwise, which needs `loginctl enable-linger`), `process` detached with a pidfile; `auto` "
        "picks systemd on an SSH host that runs it where the hive can outlive the SSH session, and a process for "
        "a local hive (which runs beside the queen).",
    )
    service_user: Annotated[str, BeforeValidator(check_service_user)] = Field(
        default="rbee",
        description="Whom a system unit (rbee connects as root) runs the hive and its workers as: a user of the "
        "hive's own, made by rbee apply when missing, who owns what the hive writes but not its code. `root` "
        "runs it as root (still sandboxed). A user unit or a process runs as the user rbee connects as.",
    )

    @property
    def ssh(self) -> SshConnection | None:
        return self.connection.ssh if isinstance(self.connection, SshBlock) else None

    @property
    def data_path(self) -> str:
        return (self.data_dir or f"~/.local/share/rbee/hives/{self.name}").rstrip("/") or "/"

    @property
    def listen_address(self) -> str:
        if self.listen:
            return self.listen
        return "127.0.0.1:9200" if self.ssh is None else "0.0.0.0:9200"

    @property
    def tls(self) -> bool:
        """Whether the hive and its workers serve TLS: whenever they listen off loopback (an SSH hive always
        does), or hive.yaml asks. A hive on this machine's loopback may stay on plain HTTP: nothing crosses a
        network."""
        if self.transport == "tls":
            return True
        return self.ssh is not None or not is_loopback(self.listen_address.rpartition(":")[0])

    @property
    def api_host(self) -> str:
        """The host name or address the queen reaches this hive (and its workers) at."""
        host = self.listen_address.rpartition(":")[0].strip("[]")
        if self.ssh is not None and host in ("0.0.0.0", "::"):
            host = self.ssh.host
        elif host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return host

    @property
    def api_url(self) -> str:
        """Where the queen reaches this hive's HTTP API."""
        host, port = self.api_host, self.listen_address.rpartition(":")[2]
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def describe_connection(self) -> str:
        ssh = self.ssh
        if ssh is None:
            return "local"
        user = f"{ssh.user}@" if ssh.user else ""
        return f"ssh {user}{ssh.host}:{ssh.port}"


class ModelSpec(Strict):
    name: Name
    source: str = Field(
        description="hf://org/repo[/file][@revision], file:///path, pypi://package/path, or system://espeak-ng "
        "(a speech engine the hive's system provides); a speech model that is not system://espeak-ng is a Piper voice"
    )
    format: Literal["auto"] | source_mod.ModelFormat = "auto"
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None
    kind: ModelKind = ModelKind.TEXT
    mmproj: str | None = Field(
        default=None,
        description="A GGUF model's multimodal projector (one .gguf file, any source scheme): the model then "
        "takes image parts in chat messages. Without it, an image is refused with a 400 naming the model.",
    )
    code_files: Literal["skip", "fetch"] = Field(
        default="skip",
        description="A whole Hugging Face repo is fetched without its *.py, *.pkl and *.bin files (code, and "
        "pickles a loader would run) unless this says fetch; rbee's engines never run a repo's code either way.",
    )
    idle_timeout: Seconds = Field(default=300.0, description="Stop a worker idle this long; 0 means never.")
    stream_idle_timeout: Seconds | None = Field(
        default=None, description="Overrides queen.stream_idle_timeout for this model's streams."
    )
    request_timeout: Seconds = Field(
        default=600.0,
        description="The longest one request may generate for; past it the answer ends with an error "
        "(time_limit) and the worker takes the next request. 0 means no limit.",
    )

    @field_validator("source")
    @classmethod
    def _valid_source(cls, value: str) -> str:
        source_mod.parse_source(value)
        return value

    @field_validator("mmproj")
    @classmethod
    def _valid_projector(cls, value: str | None) -> str | None:
        if value is not None and not (source_mod.parse_source(value).file_name or "").lower().endswith(".gguf"):
            raise ValueError(f"mmproj must name one .gguf file (a multimodal projector), not {value}")
        return value

    @model_validator(mode="after")
    def _speech_from_its_engine(self) -> ModelSpec:
        speaks = self.resolved_format in (source_mod.ModelFormat.ESPEAK, source_mod.ModelFormat.PIPER)
        if speaks and self.kind is not ModelKind.SPEECH:
            raise ValueError(f"{self.source} is a {self.resolved_format} voice; set kind: speech on model {self.name}")
        if self.kind is ModelKind.SPEECH and not speaks:
            raise ValueError(
                f"speech models are eSpeak NG (source: system://espeak-ng) or Piper voices (a .onnx file with its "
                f".onnx.json, or a folder holding them; format: piper): model {self.name} is {self.resolved_format}"
            )
        return self

    @property
    def parsed_source(self) -> source_mod.ModelSource:
        return source_mod.parse_source(self.source)

    @property
    def resolved_format(self) -> source_mod.ModelFormat:
        if self.format != "auto":
            return source_mod.ModelFormat(self.format)
        return self.parsed_source.guess_format(str(self.kind))


class WorkerSpec(Strict):
    model: str
    hive: str
    backend: Literal["auto"] | Backend = "auto"
    device: Annotated[str, StringConstraints(pattern=r"^(auto|cpu|metal|cuda(:\d+)?)$")] = "auto"
    replicas: Annotated[int, Field(ge=0, le=1024)] = 1
    min_replicas: Annotated[int, Field(ge=0, le=1024)] | None = Field(
        default=None,
        description="With an idle timeout, replicas is a maximum: idle workers stop down to this floor (default 0)"
        " and a request for a model with none running starts one.",
    )
    idle_timeout: Seconds | None = Field(default=None, description="Overrides the model's idle_timeout.")
    slots: Annotated[int, Field(ge=1, le=256)] | None = Field(
        default=None,
        description="Requests each worker serves at once from one model load (continuous batching; gguf, torch "
        "and mlx: default 4, or as many as the device's free memory holds the KV cache of). Backends that cannot "
        "batch serve one. Applies to workers started after it changes.",
    )
    context: Annotated[int, Field(ge=256, le=1048576)] | None = Field(
        default=None,
        description="Tokens of context per slot (gguf: default 4096; torch: 4096, or the model's own where that is "
        "less); the KV cache holds slots x context tokens (torch's grows as it fills, to twice that at most).",
    )
    threads: Annotated[int, Field(ge=1, le=256)] | None = Field(
        default=None,
        description="The engine's compute threads per worker (llama.cpp, torch, sentence-transformers; default: "
        "every core). Fewer leave cores to the worker's serving loop and to other workers on the host. Applies to "
        "workers started after it changes.",
    )
    load_timeout: Annotated[Seconds, Field(gt=0)] | None = Field(
        default=None,
        description="How long a worker may take to load its model before the hive counts it failed and says so "
        "(default 10 min; a 70B model from a slow disk may need more).",
    )

    @property
    def shape(self) -> WorkerShape:
        return WorkerShape(self.slots, self.context, self.threads, self.load_timeout)

    @model_validator(mode="after")
    def _floor_below_ceiling(self) -> WorkerSpec:
        if self.min_replicas is not None and self.min_replicas > self.replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) must not exceed replicas ({self.replicas})")
        return self

    @property
    def group(self) -> WorkerGroup:
        return WorkerGroup(self.model, str(self.backend), self.device)

    def idle_after(self, model: ModelSpec | None) -> float:
        """Seconds without a request after which a worker of this group stops; 0 means never."""
        if self.idle_timeout is not None:
            return self.idle_timeout
        return model.idle_timeout if model is not None else 0.0

    def floor(self, model: ModelSpec | None) -> int:
        """How many replicas run even when idle: all of them without an idle timeout, else min_replicas."""
        if self.idle_after(model) <= 0:
            return self.replicas
        return self.min_replicas if self.min_replicas is not None else 0


class HiveFile(Strict):
    """The whole of hive.yaml."""

    version: Literal[1] = 1
    queen: QueenSpec = QueenSpec()
    hives: tuple[HiveSpec, ...]
    models: tuple[ModelSpec, ...] = ()
    workers: tuple[WorkerSpec, ...] = ()
    providers: tuple[ProviderSpec, ...] = Field(
        default=(), description="Other rbee queens or OpenAI-compatible endpoints that serve models for this queen."
    )

    def hive(self, name: str) -> HiveSpec | None:
        return next((hive for hive in self.hives if hive.name == name), None)

    def model(self, name: str) -> ModelSpec | None:
        # The queen looks each request's model up several times: a dict, made again for a copy with other models.
        models, by_name = self.__dict__.get("_models_by_name", ((), {}))
        if models is not self.models:
            models, by_name = self.models, {model.name: model for model in self.models}
            self.__dict__["_models_by_name"] = models, by_name
        found: ModelSpec | None = by_name.get(name)
        return found

    def model_dirs(self, hive: HiveSpec) -> tuple[str, ...]:
        models = {model.name: model for model in self.models}
        return model_dirs(hive, [worker for worker in self.workers if worker.hive == hive.name], models)


def model_dirs(hive: HiveSpec, workers: list[WorkerSpec], models: dict[str, ModelSpec]) -> tuple[str, ...]:
    """Where `hive` may read file:// models from: the folders hive.yaml names, or else exactly the file:// models
    its `workers` use (what the operator asked for, and nothing beside it)."""
    if hive.model_dirs is not None:
        return tuple(folder.rstrip("/") for folder in hive.model_dirs)
    found: dict[str, None] = {}
    for worker in workers:
        model = models.get(worker.model)
        if model is not None and model.source.startswith("file://"):
            found[model.parsed_source.location.rstrip("/")] = None
    return tuple(found)


def json_schema() -> dict[str, Any]:
    schema = HiveFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "rbee hive.yaml"
    return schema
