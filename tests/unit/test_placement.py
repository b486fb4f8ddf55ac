"""Detection, backend and device selection, and preflight, on host profiles of a 4-GPU CUDA server, an Apple
M-series Mac and a CPU-only box (tests/unit/host_profiles: the real tools' output formats), plus this machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rbee.api.state import Device, HostFacts, WorkerShape
from rbee.hive import detect
from rbee.spec import placement
from rbee.spec.placement import fitted

PROFILES = Path(__file__).parent / "host_profiles"
GB = 1_000_000_000


def profile(name: str) -> HostFacts:
    data = json.loads((PROFILES / f"{name}.json").read_text())
    data["engines"] = tuple(data.get("engines", ()))
    return detect.facts_from(detect.Probes(**data))


def test_a_cuda_server_reports_each_gpu_with_its_memory() -> None:
    facts = profile("cuda-4x-a100")
    gpus = [device for device in facts.devices if device.kind == "cuda"]
    assert [gpu.id for gpu in gpus] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert gpus[1].memory_total == 81920 << 20 and gpus[1].memory_free == 40210 << 20
    assert facts.device("cpu") is not None and facts.device("cpu").memory_free == 498765432 * 1024  # type: ignore[union-attr]
    assert facts.cpu_features == ("avx", "avx2", "fma", "f16c") and facts.cpu_count == 64


def test_an_apple_silicon_mac_has_metal_sharing_its_memory() -> None:
    facts = profile("mac-m2-pro")
    metal = facts.device("metal")
    assert metal is not None and metal.name == "Apple M2 Pro"
    assert metal.memory_total == 34359738368
    assert metal.memory_free == (81234 + 598765 + 12345) * 16384
    assert not facts.has("cuda") and facts.cpu_features == ("neon",)


@pytest.mark.parametrize(
    ("host", "fmt", "expected_backend", "expected_device"),
    [
        ("cuda-4x-a100", "gguf", "gguf", "cuda:0"),  # the GPU with the most free memory (0 and 2 tie: first)
        ("mac-m2-pro", "gguf", "gguf", "metal"),
        ("cpu-only", "gguf", "gguf", "cpu"),
    ],
)
def test_auto_picks_the_platforms_engine_and_device(
    host: str, fmt: str, expected_backend: str, expected_device: str
) -> None:
    facts = profile(host)
    backend = placement.choose_backend("m", "text", fmt, "auto", facts)
    assert backend == expected_backend
    assert placement.choose_device("auto", backend, facts).id == expected_device


def test_hf_folders_go_to_torch_on_cuda_and_to_mlx_on_a_mac() -> None:
    cuda = profile("cuda-4x-a100")
    backend = placement.choose_backend("m", "text", "safetensors", "auto", cuda)
    assert backend == "torch" and placement.choose_device("auto", backend, cuda).id == "cuda:0"
    with pytest.raises(placement.Refused, match="the torch backend's engine is not installed on this hive"):
        placement.choose_backend("m", "text", "safetensors", "auto", profile("cpu-only"))
    mac = profile("mac-m2-pro")
    backend = placement.choose_backend("m", "text", "safetensors", "auto", mac)
    assert backend == "mlx" and placement.choose_device("auto", backend, mac).id == "metal"


def test_impossible_combinations_are_refused_with_a_reason() -> None:
    cpu, mac = profile("cpu-only"), profile("mac-m2-pro")
    with pytest.raises(placement.Refused, match=r"device cuda:0 was asked for .* \(it has: cpu\)"):
        placement.choose_device("cuda:0", "gguf", cpu)
    with pytest.raises(placement.Refused, match="the torch backend cannot load model m \\(gguf\\)"):
        placement.choose_backend("m", "text", "gguf", "torch", cpu)
    with pytest.raises(placement.Refused, match="only the embed backend"):
        placement.choose_backend("m", "embedding", "safetensors", "gguf", cpu)
    with pytest.raises(placement.Refused, match="engine is not installed on this hive"):
        placement.choose_backend(
            "m", "embedding", "safetensors", "auto", profile("cuda-4x-a100").model_copy(update={"engines": ("gguf",)})
        )
    with pytest.raises(placement.Refused, match="cannot run on metal"):
        placement.choose_device("metal", "embed", mac)


def test_preflight_refuses_a_model_that_does_not_fit_with_both_numbers() -> None:
    full_gpu = profile("cuda-4x-a100").device("cuda:3")
    assert full_gpu is not None
    with pytest.raises(placement.Refused) as refused:
        placement.preflight("llama-8b", 5 * GB, full_gpu)
    message = str(refused.value)
    assert "model llama-8b needs about 6.1 GB on cuda:3" in message and "1.1 GB of 85.9 GB is free" in message
    roomy = profile("cuda-4x-a100").device("cuda:0")
    assert roomy is not None
    placement.preflight("llama-8b", 5 * GB, roomy)  # fits
    placement.preflight("llama-8b", 5 * GB, roomy, reserved=placement.memory_needed(5 * GB) * 13)  # 14 fit
    with pytest.raises(placement.Refused, match=r"needs about 6\.1 GB on cuda:0 and only 33\.9 MB of 85\.9 GB"):
        placement.preflight("llama-8b", 5 * GB, roomy, reserved=placement.memory_needed(5 * GB) * 14)  # a 15th not


def test_this_machine_is_detected_live() -> None:
    facts = detect.detect()
    cpu = facts.device("cpu")
    assert cpu is not None and cpu.memory_total > 0 and 0 < cpu.memory_free <= cpu.memory_total
    assert facts.cpu_count >= 1 and facts.system
    assert "gguf" in facts.engines  # the test environment installs llama-cpp-python


def test_the_ssh_fact_reads_what_the_hive_detects() -> None:
    import subprocess
    import sys

    from rbee.infra.facts import HostDevices, parse_devices

    command = HostDevices().command(sys.executable)
    output = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60).stdout
    facts = HostFacts.model_validate(parse_devices(output.splitlines()))
    assert facts.device("cpu") is not None and facts.cpu_count >= 1
    assert parse_devices(["Traceback (most recent call last):"]) is None
    assert parse_devices([]) is None


@pytest.mark.parametrize("host", ["cuda-4x-a100", "mac-m2-pro", "cpu-only"])
@pytest.mark.parametrize(
    ("kind", "fmt"), [("text", "gguf"), ("text", "safetensors"), ("text", "mlx"), ("embedding", "safetensors")]
)
def test_the_extras_apply_installs_are_the_engines_the_hive_then_picks(host: str, kind: str, fmt: str) -> None:
    """One rule (spec/backends.py) for `backend: auto` at apply time and on the hive: the extra installed on a
    host is the engine the hive chooses there once every engine is installed."""
    from rbee.spec import backends

    facts = profile(host).model_copy(update={"engines": tuple(backends.TABLE)})
    chosen = placement.choose_backend("m", kind, fmt, "auto", facts)
    workload = backends.Workload(kind=kind, format=fmt)
    assert backends.extras([workload], None, facts.has("metal")) == (backends.TABLE[backends.Backend(chosen)].extra,)


def test_a_mac_with_an_hf_folder_gets_mlx_and_a_cuda_box_torch() -> None:
    from rbee.spec import backends

    hf_folder = backends.Workload(kind="text", format="safetensors")
    assert backends.extras([hf_folder], None, profile("mac-m2-pro").has("metal")) == ("mlx",)
    assert backends.extras([hf_folder], None, profile("cuda-4x-a100").has("metal")) == ("torch",)
    assert backends.extras([hf_folder], ["gguf", "embed"], True) == ("embed", "gguf"), "pinned backends win"


def test_slots_left_to_the_backend_are_as_many_as_fit() -> None:
    """The hive's preflight and the plan size a group that names no slots the same way: the backend's default (4)
    where it fits, else as many slots as the free memory holds for each replica, never fewer than one."""
    per_token = 1_000_000  # 4.1 GB a slot of 4096 tokens
    weights = 100_000_000
    roomy = Device(id="cpu", kind="cpu", memory_total=64 << 30, memory_free=40_000_000_000)
    tight = Device(id="cpu", kind="cpu", memory_total=16 << 30, memory_free=10_000_000_000)
    unknown = Device(id="cpu", kind="cpu")
    left = WorkerShape()
    assert fitted(weights, per_token, left, "gguf", roomy).slots is None  # the default 4 fits
    assert fitted(weights, per_token, left, "gguf", tight).slots == 2
    assert fitted(weights, per_token, left, "gguf", tight, replicas=2).slots == 1
    assert fitted(weights, per_token, left, "gguf", tight, replicas=5).slots == 1  # one, refused by the preflight
    assert fitted(weights, per_token, WorkerShape(slots=4), "gguf", tight).slots == 4  # named: kept
    assert fitted(weights, per_token, left, "gguf", unknown).slots is None
    assert fitted(weights, None, left, "gguf", tight).slots is None  # cost per token unknown
    assert fitted(weights, per_token, WorkerShape(context=1024), "gguf", tight).slots is None  # 4 x 1024 fit
    assert fitted(weights, per_token // 2, left, "torch", tight, trained=8192).slots == 2  # float32 rows of 2 x 4096
