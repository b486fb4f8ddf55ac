"""What a hive's machine can run: CUDA GPUs (nvidia-smi), Apple Metal, CPU features and RAM, and which engines
import. The parsers are pure and are tested with host profiles in the real tools' output formats; `detect()`
reads the live machine."""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass

from rbee.api.state import Device, HostFacts
from rbee.spec import backends

CPU_FLAGS = ("avx", "avx2", "avx512f", "fma", "f16c", "asimd", "neon", "sve")
NVIDIA_QUERY = "index,name,memory.total,memory.free"
MIB = 1 << 20
KIB = 1 << 10


@dataclass(frozen=True, slots=True)
class Probes:
    """Raw text from the machine, as the tools print it; any of them may be missing."""

    system: str
    machine: str
    cpu_count: int
    meminfo: str = ""
    cpuinfo: str = ""
    nvidia_smi: str = ""
    """`nvidia-smi --query-gpu=index,name,memory.total,memory.free --format=csv,noheader,nounits`"""
    sysctl: str = ""
    """`sysctl hw.memsize machdep.cpu.brand_string` on macOS."""
    vm_stat: str = ""
    engines: tuple[str, ...] = ()


def parse_meminfo(text: str) -> tuple[int, int]:
    """(total, available) bytes from /proc/meminfo."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key.strip()] = int(parts[0]) * (KIB if parts[1:] == ["kB"] else 1)
    total = values.get("MemTotal", 0)
    return total, values.get("MemAvailable", values.get("MemFree", 0))


def parse_cpu_flags(text: str) -> tuple[str, ...]:
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key.strip() in ("flags", "Features"):
            present = set(rest.split())
            return tuple(flag for flag in CPU_FLAGS if flag in present)
    return ()


def parse_nvidia_smi(text: str) -> tuple[Device, ...]:
    devices = []
    for line in text.strip().splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != 4 or not fields[0].isdigit():
            continue
        index, name, total, free = fields
        devices.append(
            Device(
                id=f"cuda:{index}",
                kind="cuda",
                name=name,
                memory_total=int(float(total)) * MIB if _number(total) else 0,
                memory_free=int(float(free)) * MIB if _number(free) else 0,
            )
        )
    return tuple(devices)


def parse_sysctl(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        values[key.strip()] = value.strip()
    return values


def parse_vm_stat_free(text: str) -> int:
    """Free plus inactive plus speculative pages from macOS `vm_stat`, in bytes."""
    page, free = 16384, 0
    for line in text.splitlines():
        if "page size of" in line:
            page = int(line.split("page size of")[1].split()[0])
        key, _, value = line.partition(":")
        if key.strip() in ("Pages free", "Pages inactive", "Pages speculative"):
            free += int(value.strip().rstrip("."))
    return free * page


def facts_from(probes: Probes) -> HostFacts:
    devices: list[Device] = []
    if probes.system == "Darwin":
        sysctl = parse_sysctl(probes.sysctl)
        total = int(sysctl.get("hw.memsize", "0") or 0)
        free = parse_vm_stat_free(probes.vm_stat)
        brand = sysctl.get("machdep.cpu.brand_string", "")
        devices.append(Device(id="cpu", kind="cpu", name=brand, memory_total=total, memory_free=free))
        if probes.machine == "arm64":
            # Apple silicon shares one memory between CPU and GPU: Metal sees the same free memory.
            devices.append(Device(id="metal", kind="metal", name=brand, memory_total=total, memory_free=free))
        features: tuple[str, ...] = ("neon",) if probes.machine == "arm64" else ()
    else:
        total, free = parse_meminfo(probes.meminfo)
        devices.append(
            Device(id="cpu", kind="cpu", name=_cpu_name(probes.cpuinfo), memory_total=total, memory_free=free)
        )
        features = parse_cpu_flags(probes.cpuinfo)
    devices.extend(parse_nvidia_smi(probes.nvidia_smi))
    return HostFacts(
        system=probes.system,
        machine=probes.machine,
        cpu_count=probes.cpu_count,
        cpu_features=features,
        devices=tuple(devices),
        engines=probes.engines,
    )


def probe() -> Probes:
    """Read the live machine (a few ms; nvidia-smi only where it is installed, bounded to 5 s)."""
    system, machine = platform.system(), platform.machine()
    return Probes(
        system=system,
        machine=machine,
        cpu_count=os.cpu_count() or 1,
        meminfo=_read("/proc/meminfo"),
        cpuinfo=_read("/proc/cpuinfo"),
        nvidia_smi=_run("nvidia-smi", f"--query-gpu={NVIDIA_QUERY}", "--format=csv,noheader,nounits"),
        sysctl=_run("sysctl", "hw.memsize", "machdep.cpu.brand_string") if system == "Darwin" else "",
        vm_stat=_run("vm_stat") if system == "Darwin" else "",
        engines=tuple(
            str(backend)
            for backend, capability in backends.TABLE.items()
            if (shutil.which(capability.engine) if capability.program else importlib.util.find_spec(capability.engine))
            is not None
        ),
    )


def detect() -> HostFacts:
    return facts_from(probe())


def refresh_free(facts: HostFacts) -> HostFacts:
    """The same facts with each device's free memory read again (before a worker is started)."""
    fresh = facts_from(probe())
    free = {device.id: device.memory_free for device in fresh.devices}
    devices = tuple(
        device.model_copy(update={"memory_free": free.get(device.id, device.memory_free)}) for device in facts.devices
    )
    return facts.model_copy(update={"devices": devices})


def _cpu_name(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return ""


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return ""


def _run(*command: str) -> str:
    if shutil.which(command[0]) is None:
        return ""
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


if __name__ == "__main__":
    import dataclasses
    import json
    import sys

    probes = probe()
    if "--probes" in sys.argv:
        print(json.dumps(dataclasses.asdict(probes), indent=2))
    else:
        print(facts_from(probes).model_dump_json(indent=2))
