"""The rbee wheel that apply uploads to hives it installs into a virtualenv of their own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import rbee


class WheelError(Exception):
    """No wheel can be made for this rbee; the message says what to do instead."""


def build(out_dir: Path) -> Path:
    """Build a wheel of the rbee this keeper runs (from its source tree) into `out_dir`."""
    source = Path(rbee.__file__).resolve().parent.parent
    if not (source / "pyproject.toml").is_file():
        raise WheelError(
            f"this rbee is not running from a source tree ({source}), so it cannot build the wheel it installs on "
            "hives; set hives[].python to a Python that has rbee installed"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("rbee-*.whl"):
        old.unlink()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out_dir),
            str(source),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    wheels = sorted(out_dir.glob("rbee-*.whl"))
    if result.returncode != 0 or not wheels:
        raise WheelError(f"building the rbee wheel failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    return wheels[0]
