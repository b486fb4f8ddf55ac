"""What hives and workers say reaches the operator's screen as text: never as rich markup."""

from __future__ import annotations

import pytest

from rbee.keeper import render


def test_a_reason_that_looks_like_markup_is_printed_as_it_is(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(render.out, "width", 300)
    reason = "loading failed: [/INST] template [bold]x"
    hive = {
        "name": "lab",
        "status": "running",
        "reason": reason,
        "state": {
            "version": "0",
            "catalog": [],
            "workers": [
                {"id": "w-1", "model": "m", "backend": "gguf", "device": "cpu", "state": "failed", "reason": reason}
            ],
        },
    }
    render.status([hive])
    render.event({"at": 0, "kind": "failed", "target": "lab/workers m", "message": reason})
    printed = capsys.readouterr().out
    assert printed.count("[/INST] template [bold]x") == 3
