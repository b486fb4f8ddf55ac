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
