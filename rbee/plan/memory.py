"""What each worker start will take in memory, against what its hive has free: shown in the plan, so that a start
that cannot fit is seen before anything runs, with the same numbers the hive's preflight will check.

Pure: it reads the hive's reported facts and catalog. A hive's free memory is shared by the groups started on it
in one plan, so the ledger subtracts each start from what the next one sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rbee.api.state import CatalogEntry, HostFacts, WorkerInfo, WorkerShape
from rbee.api.units import human_size
from rbee.spec import backends, placement
from rbee.spec.schema import ModelSpec, WorkerSpec


@dataclass(slots=True)
class Ledger:
    """One hive's free memory per device, as the starts of this plan take it."""

    facts: HostFacts | None
    taken: dict[str, int] = field(default_factory=dict)
    """Per device: what this plan's starts take, less what its stops free (negative: more free than reported)."""

    def release(self, stopped: list[WorkerInfo], entry: CatalogEntry | None, shape: WorkerShape) -> None:
        """Credit what stopping `stopped` frees, for the starts that wait for those stops (their own group's: a
        start requires only its group's stops). A worker's context is hive.yaml's, as the backend would size it."""
        if entry is None:
            return
        for worker in stopped:
            shaped = WorkerShape(worker.slots, shape.context)
            cache = placement.kv_cache(
                entry.kv_bytes_per_token, shaped, worker.backend, worker.device, entry.context_length
            )
            freed = placement.footprint(entry.size_bytes, cache)
            self.taken[worker.device] = self.taken.get(worker.device, 0) - freed

    def start_note(
        self,
        worker: WorkerSpec,
        model: ModelSpec | None,
        entry: CatalogEntry | None,
        count: int,
        download: int | None = None,
    ) -> str:
        """`; needs about …` for starting `count` workers of `worker`'s group, or why that cannot be told yet. A
        model not fetched yet is sized by its download (its KV cache is known once its header is here)."""
        if self.facts is None or model is None:
            return ""
        if entry is None and download is None:
            return "; its memory is known once the model is fetched"
        estimated = entry is None
        if entry is None:
            fmt = str(model.resolved_format)
            entry = CatalogEntry(name=model.name, source=model.source, format=fmt, size_bytes=download or 0)
        try:
            backend = placement.choose_backend(
                model.name, str(model.kind), entry.format, str(worker.backend), self.facts
            )
            device = placement.choose_device(worker.device, backend, self.facts)
        except placement.Refused as refusal:
            return f"; the hive will refuse it: {refusal}"
        free = device.memory_free - self.taken.get(device.id, 0)
        per_token, trained = entry.kv_bytes_per_token, entry.context_length
        room = device.model_copy(update={"memory_free": max(free, 0)})
        shape = placement.fitted(entry.size_bytes, per_token, worker.shape, backend, room, trained, count)
        cache = placement.kv_cache(per_token, shape, backend, device.id, trained)
        each = placement.footprint(entry.size_bytes, cache)
        parts = f"{human_size(placement.memory_needed(entry.size_bytes))} weights"
        if cache is not None:
            parts += f" + {cache.size} KV cache of {cache.slots} slots x {cache.context} tokens"
            if shape.slots != worker.shape.slots:
                parts += ", as many slots as fit"
        elif estimated and backend in (str(backends.Backend.GGUF), str(backends.Backend.TORCH)):
            parts += ", its KV cache known once it is fetched"
        need = each * count
        sizing = f"{count} x {human_size(each)} ({parts})" if count > 1 else f"{human_size(each)} ({parts})"
        if not device.memory_free:
            return f"; needs about {sizing} on {device.id} (its free memory is not known)"
        others = " after the starts above" if free < device.memory_free else ""
        if free > device.memory_free:
            others = " once the stops it waits for free theirs"
        if need <= free:
            self.taken[device.id] = self.taken.get(device.id, 0) + need  # a start that does not fit is refused
        else:
            fix = "lower workers[].slots or context, " if cache is not None else ""
            return (
                f"; does not fit: needs about {sizing} on {device.id} and {human_size(max(free, 0))} of "
                f"{human_size(device.memory_total)} is free{others}; {fix}lower replicas or choose another device"
            )
        return f"; needs about {sizing} of {human_size(free)} free on {device.id}{others}"
