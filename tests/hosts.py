"""Test hosts: N machines on this one, each a network namespace on a bridge with its own sshd, its own
address, its own private directories and its own process table (FACTS.md). Used by the e2e tests; a developer
can also run them by hand:

    python -m tests.hosts up 3      # prints addresses, the SSH key and the known_hosts file
    python -m tests.hosts up 1 --systemd
    python -m tests.hosts down

With `systemd`, each host boots systemd as its PID 1 (in its own cgroup namespace, with its own /run and
/etc/systemd/system) and sshd runs as a unit of it, as on a real server.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

BRIDGE = "rbeebr0"
SUBNET = "10.200.0"
STATE = Path(os.environ.get("RBEE_TEST_HOSTS", "/var/lib/rbee-test-hosts"))
PRIVATE = ("/srv/rbee",)
"""Directories each host has for itself (bind mounts inside its mount namespace)."""
CGROUP_HIERARCHIES = ("systemd", "unified")
"""The cgroup hierarchies systemd uses on this machine (hybrid: name=systemd v1 and the v2 'unified')."""


class HostsUnavailable(Exception):
    """Network namespaces or sshd cannot be used here; the message says why."""


@dataclass
class Host:
    name: str
    address: str
    namespace: str
    veth: str
    root: Path
    pid: int = 0
    process: subprocess.Popen[bytes] | None = None
    systemd: bool = False

    def run(self, command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a command inside this host's namespaces (network, mount and pid)."""
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), "-n", "-m", "-p", "sh", "-c", command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def processes(self) -> list[str]:
        out = self.run("ps -eo args= 2>/dev/null || true").stdout
        return [line for line in out.splitlines() if line.strip()]

    def cut(self) -> None:
        _ip("link", "set", self.veth, "down")

    def heal(self) -> None:
        _ip("link", "set", self.veth, "up")


@dataclass
class Hosts:
    root: Path
    hosts: list[Host] = field(default_factory=list)

    @property
    def key(self) -> Path:
        return self.root / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise HostsUnavailable(f"ip {' '.join(args)} failed: {result.stderr.strip()}")


def available() -> str | None:
    """None when test hosts can be made here, else why not."""
    if os.geteuid() != 0:
        return "test hosts need root (network namespaces)"
    if not Path("/usr/sbin/sshd").exists():
        return "openssh-server is not installed (apt-get install openssh-server)"
    probe = f"rbee-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        return f"network namespaces are not permitted here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def up(count: int, root: Path = STATE, *, systemd: bool = False) -> Hosts:
    down(root)
    root.mkdir(parents=True, exist_ok=True)
    hosts = Hosts(root)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hosts.key)], check=True)
    _ip("link", "add", BRIDGE, "type", "bridge")
    _ip("addr", "add", f"{SUBNET}.1/24", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")
    known = []
    for index in range(1, count + 1):
        host = Host(
            f"node{index}",
            f"{SUBNET}.{10 + index}",
            f"rbee-node{index}",
            f"rbeeveth{index}",
            root / f"node{index}",
            systemd=systemd,
        )
        _start(host, hosts)
        hosts.hosts.append(host)
        known.append(
            f"{host.address} {(host.root / 'ssh_host_ed25519_key.pub').read_text().split(' ', 2)[0]} "
            f"{(host.root / 'ssh_host_ed25519_key.pub').read_text().split(' ', 2)[1]}"
        )
    hosts.known_hosts.write_text("\n".join(known) + "\n")
    for host in hosts.hosts:
        _wait_ssh(host)
    (root / "hosts.json").write_text(
        json.dumps(
            [
                {"name": h.name, "address": h.address, "pid": h.pid, "namespace": h.namespace, "veth": h.veth}
                for h in hosts.hosts
            ]
        )
    )
    if systemd:
        for host in hosts.hosts:
            _wait_systemd(host)
    return hosts


def _start(host: Host, hosts: Hosts) -> None:
    host.root.mkdir(parents=True)
    for folder in PRIVATE:
        (host.root / folder.strip("/").replace("/", "-")).mkdir()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host.root / "ssh_host_ed25519_key")], check=True
    )
    config = host.root / "sshd_config"
    config.write_text(
        f"Port 22\nListenAddress {host.address}\nHostKey {host.root / 'ssh_host_ed25519_key'}\n"
        f"AuthorizedKeysFile {hosts.key}.pub\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nPidFile none\nMaxStartups 100\n"
        "MaxSessions 100\nSubsystem sftp internal-sftp\n"
    )
    _ip("netns", "add", host.namespace)
    _ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.namespace)
    _ip("link", "set", host.veth, "master", BRIDGE)
    _ip("link", "set", host.veth, "up")
    _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
    _ip("-n", host.namespace, "link", "set", "eth0", "up")
    _ip("-n", host.namespace, "link", "set", "lo", "up")
    if host.systemd:
        script = _systemd_boot(host, config)
    else:
        mounts = " && ".join(
            f"mkdir -p {folder} && mount --bind {host.root / folder.strip('/').replace('/', '-')} {folder}"
            for folder in PRIVATE
        )
        # root's ~/.bashrc runs pyenv init (0.3 s a command): each host sees an empty one.
        script = (
            f"{mounts} && touch {host.root}/bashrc && mount --bind {host.root}/bashrc /root/.bashrc && "
            f"mkdir -p /run/sshd && exec /usr/sbin/sshd -D -e -f {config}"
        )
    log = (host.root / "sshd.log").open("ab")
    process = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            host.namespace,
            "unshare",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    host.process = process
    host.pid = _child_pid(process.pid)


def _systemd_boot(host: Host, config: Path) -> str:
    """The start script of a host that runs systemd as its PID 1, as a container would: its root is a
    copy-on-write overlay of this machine's (so what systemd does at boot stays in the host), except /tmp, which
    it shares as the other test hosts do (with systemd-tmpfiles masked, which would empty it), /sys and /proc/sys
    are read-only, it has its own cgroup tree in its own cgroup namespace, and its
    target starts sshd only."""
    units = host.root / "units"
    units.mkdir()
    (units / "rbee-test.target").write_text(
        "[Unit]\nDescription=rbee test host\nWants=rbee-test-sshd.service\nAllowIsolate=yes\n"
    )
    (units / "rbee-test-sshd.service").write_text(
        "[Unit]\nDescription=sshd of the rbee test host\n\n[Service]\nRuntimeDirectory=sshd\n"
        f"ExecStart=/usr/sbin/sshd -D -e -f {config}\nStandardOutput=append:{host.root}/sshd.log\n"
        "StandardError=inherit\n"
    )
    for unit in ("systemd-tmpfiles-setup.service", "systemd-tmpfiles-clean.service", "systemd-tmpfiles-clean.timer"):
        (units / unit).symlink_to("/dev/null")  # masked: the host shares this machine's /tmp, which they would empty
    (host.root / "bashrc").touch()  # root's ~/.bashrc runs pyenv init (0.3 s a command): the host's is empty
    new, layers = host.root / "rootfs", host.root / "layers"
    new.mkdir()
    layers.mkdir()
    binds = [(host.root, host.root), (host.root / "bashrc", Path("/root/.bashrc"))] + [
        (host.root / folder.strip("/").replace("/", "-"), Path(folder)) for folder in PRIVATE
    ]
    steps = [
        f"mount -t tmpfs tmpfs {layers} && mkdir {layers}/upper {layers}/work",
        f"mount -t overlay overlay -o lowerdir=/,upperdir={layers}/upper,workdir={layers}/work {new}",
        *(f"mkdir -p {new}{inside} && mount --bind {outside} {new}{inside}" for outside, inside in binds[:1]),
        *(f"mount --bind {outside} {new}{inside}" for outside, inside in binds[1:2]),
        *(f"mkdir -p {new}{inside} && mount --bind {outside} {new}{inside}" for outside, inside in binds[2:]),
        f"mount -t proc proc {new}/proc && mount --bind {new}/proc/sys {new}/proc/sys",
        f"mount -o remount,bind,ro {new}/proc/sys",
        f"mount --bind /sys {new}/sys && mount -o remount,bind,ro {new}/sys",
        f"mount --rbind /dev {new}/dev",
        f"mount -t tmpfs -o mode=755 tmpfs {new}/run && mount --bind /tmp {new}/tmp",
        # cgroups: mount the machine's hierarchies, move into this host's own, and mount them again from inside
        # a new cgroup namespace, so that this systemd sees (and makes) only its own tree
        f"mount -t tmpfs -o mode=755 tmpfs {new}/sys/fs/cgroup",
        *(
            f"mkdir {new}/sys/fs/cgroup/{name} && mount -t {kind} {new}/sys/fs/cgroup/{name}"
            for name, kind in (("systemd", "cgroup -o none,name=systemd cgroup"), ("unified", "cgroup2 cgroup2"))
        ),
        *(
            f"mkdir -p {new}{_cgroup(name, host)} && echo $$ > {new}{_cgroup(name, host)}/cgroup.procs && "
            f"umount {new}/sys/fs/cgroup/{name}"
            for name in CGROUP_HIERARCHIES
        ),
        f"mkdir -p {new}/.old && cd {new} && pivot_root . .old && cd / && umount -l /.old && rmdir /.old",
    ]
    boot = (
        "mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd && "
        "mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified && "
        f"exec env container=rbee-test SYSTEMD_UNIT_PATH={units}: /lib/systemd/systemd --system "
        "--unit=rbee-test.target --log-target=null"
    )
    return " && ".join(steps) + f" && exec unshare --cgroup sh -c {shlex.quote(boot)}"


def _cgroup(hierarchy: str, host: Host) -> str:
    return f"/sys/fs/cgroup/{hierarchy}/rbee-{host.name}"


def _wait_systemd(host: Host) -> None:
    deadline = time.monotonic() + 30
    state = ""
    while time.monotonic() < deadline:
        state = host.run("systemctl is-system-running 2>&1", timeout=10).stdout.strip()
        if state in ("running", "degraded"):
            return
        time.sleep(0.1)
    raise HostsUnavailable(f"systemd on {host.name} did not come up (it says {state!r})")


def _child_pid(unshare_pid: int) -> int:
    """The pid (in our namespace) of the first process inside the host's pid namespace."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == unshare_pid:
                    return int(entry.name)
        time.sleep(0.02)
    raise HostsUnavailable("the host's first process did not start")


def _wait_ssh(host: Host) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host.address, 22), timeout=1) as sock:
            if sock.recv(4).startswith(b"SSH"):
                return
        time.sleep(0.05)
    raise HostsUnavailable(f"sshd on {host.name} ({host.address}) did not answer; see {host.root / 'sshd.log'}")


def down(root: Path = STATE, made: Hosts | None = None) -> None:
    """Remove every test host and the bridge; safe to call when none exist."""
    for host in made.hosts if made else []:
        if host.process is not None:
            host.process.kill()  # unshare ignores SIGTERM
            host.process.wait(10)
    record = root / "hosts.json"
    if record.exists():
        for item in json.loads(record.read_text()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(item["pid"]), signal.SIGKILL)
    for line in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith("rbeeveth"):
            subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
    for line in subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=False
    ).stdout.splitlines():
        name = line.split()[0]
        if name.startswith("rbee-node"):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)
    for hierarchy in CGROUP_HIERARCHIES:  # a systemd host's cgroups, once its processes are gone
        for node in Path(f"/sys/fs/cgroup/{hierarchy}").glob("rbee-node*"):
            _remove_cgroup(node)
    if root.exists():
        shutil.rmtree(root, ignore_errors=True)


def _remove_cgroup(node: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for folder in sorted((path for path in node.rglob("*") if path.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                folder.rmdir()
        with contextlib.suppress(OSError):
            node.rmdir()
        if not node.exists():
            return
        time.sleep(0.1)  # its last processes are still being reaped


@contextlib.contextmanager
def running(count: int, *, systemd: bool = False) -> Iterator[Hosts]:
    """`count` test hosts for a test module, removed afterwards; skips (saying why) where they cannot run."""
    import pytest

    why = available()
    if why:
        pytest.skip(f"SSH tests skipped: {why}")
    if systemd and not Path("/lib/systemd/systemd").exists():
        pytest.skip("systemd tests skipped: systemd is not installed (apt-get install systemd)")
    made = up(count, systemd=systemd)
    try:
        yield made
    finally:
        down(made=made)


def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] == "down":
        down()
        return
    count = int(sys.argv[2]) if len(sys.argv) >= 3 and sys.argv[2].isdigit() else 3
    why = available()
    if why:
        raise SystemExit(why)
    hosts = up(count, systemd="--systemd" in sys.argv)
    for host in hosts.hosts:
        print(f"{host.name}: root@{host.address} (pid {host.pid})")
    print(f"key: {hosts.key}\nknown_hosts: {hosts.known_hosts}")


if __name__ == "__main__":
    main()
