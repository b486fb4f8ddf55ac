"""Quantities as people read them. No I/O here."""

from __future__ import annotations


def human_size(size: int) -> str:
    """Bytes in decimal units, as disks and model cards count them: `4.1 GB`."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"
