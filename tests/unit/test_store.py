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
