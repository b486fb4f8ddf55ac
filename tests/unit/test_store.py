"""The queen's event log in real SQLite: reading after an id, and pruning to the newest events."""

from __future__ import annotations

from pathlib import Path

from rbee.queen.store import Store


def test_the_event_log_reads_after_an_id_and_keeps_the_newest(tmp_path: Path) -> None:
    store = Store(tmp_path / "queen.db")
    for number in range(50):
        store.log("apply", "local/workers m", str(number))
    after = store.events(5, after=10)
    assert [event["message"] for event in after] == ["10", "11", "12", "13", "14"]
    store.prune_events(keep=10)
    kept = store.events(100)
    assert [event["message"] for event in kept] == [str(number) for number in range(40, 50)]
    store.log("apply", "local/workers m", "next")
    assert store.events(1)[0]["id"] == 51, "ids keep growing after a prune"
    store.close()


def test_the_end_marker_is_matched_at_a_line_start_only() -> None:
    from rbee.api import wire

    end = wire.end_comment(3, 5, "stop")
    assert wire.parse_end(b'data: {"token":"x"}\n\n' + end) == {
        "prompt_tokens": 3,
        "completion_tokens": 5,
        "finish_reason": "stop",
    }
    assert wire.parse_end(end, stream_start=True) is not None
    assert wire.parse_end(end) is None, "mid-stream, a buffer's first bytes are not a line start"
    assert wire.parse_end(b'data: {"token":": rbee-end {\\"completion_tokens\\": 9}"}\n\n') is None
    assert wire.parse_end(b"data: {}\n\n: rbee-end {not json\n\n") is None


CRASH_BETWEEN_WRITES = """
import os, signal, sqlite3, sys
from rbee.queen.store import Store
from rbee.spec import load
from rbee.spec.policy import PolicyRef

store = Store(__import__("pathlib").Path(sys.argv[1]))
spec = load.loads("hives: [{name: second}]\\n")
real = store.db._db


class Crashing:
    def execute(self, statement, *args):
        if statement.startswith("INSERT INTO settings"):
            os.kill(os.getpid(), signal.SIGKILL)  # the spec row is written, the policy row not yet
        return real.execute(statement, *args)


store.db._db = Crashing()
store.apply_spec(spec, "second.yaml", PolicyRef(name="route.py", sha256="b" * 64))
"""


def test_a_crash_between_the_spec_and_its_policy_leaves_neither(tmp_path: Path) -> None:
    """A queen SIGKILLed after writing a spec and before writing the policy it names: the next start finds the
    spec and policy applied before, whole (one transaction), not a spec without its policy."""
    import signal
    import subprocess
    import sys

    from rbee.spec import load
    from rbee.spec.policy import PolicyRef

    path = tmp_path / "queen.db"
    first = Store(path)
    before = PolicyRef(name="route.py", sha256="a" * 64)
    assert first.apply_spec(load.loads("hives: [{name: first}]\n"), "first.yaml", before) == (1, True)
    first.close()
    crashed = subprocess.run([sys.executable, "-c", CRASH_BETWEEN_WRITES, str(path)], capture_output=True, timeout=60)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    again = Store(path)
    current = again.current_spec()
    assert current is not None and current[0] == 1 and current[1].hives[0].name == "first"
    assert again.policy() == before
    again.close()
