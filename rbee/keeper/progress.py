"""Live progress of an apply for people: one line per change, download bars and worker readiness on a terminal."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as Bars
from rich.text import Text

from rbee.api import wire
from rbee.api.units import human_size
from rbee.clients.hive import Progress, Readiness
from rbee.plan.actions import Change
from rbee.plan.render import VERBS


def describe(change: Change) -> str:
    target = change.target + (f" x{change.replicas}" if change.replicas else "")
    where = "" if change.target.startswith("hive ") else f" on hive {change.hive}"
    return f"{change.symbol} {VERBS[change.action]} {target}{where}"


class ConsoleReporter:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self.bars = Bars(
            TextColumn("  {task.description}"),
            BarColumn(),
            DownloadColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.tasks: dict[str, TaskID] = {}
        self.shown: dict[str, float] = {}
        self.started: dict[str, float] = {}
        self.failed = 0
        self.done = 0

    def __enter__(self) -> ConsoleReporter:
        if self.live:
            self.bars.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self.live:
            self.bars.stop()

    def begin(self, change: Change) -> None:
        if self.live:
            self.tasks[change.id] = self.bars.add_task(describe(change), total=None)
        else:
            self.console.print(f"  {describe(change)} ...")

    def progress_line(self, change: Change, text: str) -> None:
        if not self.live:
            self.console.print(Text(f"    {text}", style="dim"))

    def progress(self, change: Change, event: Progress) -> None:
        task = self.tasks.get(change.id)
        if isinstance(event, wire.DownloadProgress):
            if task is not None:
                self.bars.update(task, completed=event.bytes, total=event.total or None)
            else:
                self._download_line(change, event)
        elif isinstance(event, Readiness):
            loading = f", loading {event.loading:.0%}" if event.loading is not None else ""
            if task is not None:
                self.bars.update(task, description=f"{describe(change)} ({event.ready}/{event.of} ready{loading})")
            elif loading and event.loading != self.shown.get(change.id):
                self.shown[change.id] = event.loading or 0.0
                self.progress_line(change, f"{event.ready}/{event.of} ready{loading}")
        else:
            self.progress_line(change, event.describe())

    def _download_line(self, change: Change, event: wire.DownloadProgress) -> None:
        """Without a terminal: a line at each quarter of a download of known size (each 50 MB otherwise), with the
        bytes so far and the speed since it began."""
        started = self.started.setdefault(change.id, time.monotonic())
        step = int(4 * event.bytes / event.total) if event.total else event.bytes // 50_000_000
        if step <= self.shown.get(change.id, 0):
            return
        self.shown[change.id] = step
        speed = event.bytes / max(time.monotonic() - started, 1e-3)
        of = f" of {human_size(event.total)} ({event.bytes / event.total:.0%})" if event.total else ""
        self.progress_line(change, f"downloaded {human_size(event.bytes)}{of}, {human_size(int(speed))}/s")

    def end(self, change: Change, error: str | None) -> None:
        task = self.tasks.pop(change.id, None)
        if task is not None:
            self.bars.remove_task(task)
        if error:
            self.failed += 1
            self.console.print(Text(f"  ✗ {describe(change)}: {error}", style="red"))
        else:
            self.done += 1
            self.console.print(Text(f"  ✓ {describe(change)}", style="green"))


class QuietReporter:
    """For a command that prints its own summary of what was done (`rbee destroy`)."""

    def begin(self, change: Change) -> None:
        pass

    def progress(self, change: Change, event: Progress) -> None:
        pass

    def end(self, change: Change, error: str | None) -> None:
        pass
