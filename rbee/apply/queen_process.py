"""Starting, finding and stopping the queen on the operator's machine, and giving it the applied spec."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import httpx

from rbee.apply.home import Home
from rbee.spec.schema import HiveFile


class QueenError(Exception):
    """The queen could not be started or reached; the message says what to check."""


def url_for(spec: HiveFile) -> str:
    host, _, port = spec.queen.listen.rpartition(":")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def is_running(url: str, token: str | None) -> bool:
    try:
        response = httpx.get(f"{url}/v2/status", headers=_auth(token), timeout=2.0, trust_env=False)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def ensure_running(spec: HiveFile, home: Home, token: str) -> tuple[str, bool]:
    """The queen's URL, and whether it had to be started."""
    url = url_for(spec)
    if is_running(url, token):
        return url, False
    with contextlib.suppress(httpx.HTTPError):
        if httpx.get(f"{url}/health", timeout=2.0, trust_env=False).status_code == 200:
            raise QueenError(
                f"another queen answers at {url} and refuses this cluster token; stop it or change queen.listen"
            )
    home.queen_dir.mkdir(parents=True, exist_ok=True)
    log = (home.queen_dir / "queen.log").open("ab")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rbee",
            "queen",
            "serve",
            "--state-dir",
            str(home.queen_dir),
            "--listen",
            spec.queen.listen,
            "--token-file",
            str(home.token_file),
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + 20
    while not is_running(url, token):
        if process.poll() is not None:
            raise QueenError(
                f"the queen exited at start (code {process.returncode}); see {home.queen_dir / 'queen.log'}"
            )
        if time.monotonic() > deadline:
            process.kill()
            raise QueenError(f"the queen did not answer on {url} within 20 s; see {home.queen_dir / 'queen.log'}")
        time.sleep(0.05)
    home.remember_queen(url, process.pid)
    return url, True


def push_spec(url: str, token: str, spec: HiveFile, source: str, policy_source: str | None = None) -> tuple[int, bool]:
    body = {"spec": spec.model_dump(mode="json"), "source": source, "policy_source": policy_source}
    response = httpx.put(f"{url}/v2/spec", json=body, headers=_auth(token), timeout=30.0, trust_env=False)
    if response.status_code != 200:
        raise QueenError(f"the queen refused the spec: {response.text}")
    body = response.json()
    return int(body["generation"]), bool(body["changed"])


def stop(home: Home, token: str | None) -> bool:
    """Stop the queen this keeper started; True if one was running."""
    record = home.queen()
    if record is None:
        return False
    url, pid = str(record.get("url")), int(str(record.get("pid", 0)))
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(f"{url}/v2/admin/shutdown", headers=_auth(token), timeout=5.0, trust_env=False)
    stopped = _wait_gone(pid, 10.0)
    if not stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 5.0)
    home.forget_queen()
    return True


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    return False


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}
