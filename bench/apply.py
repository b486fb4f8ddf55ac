"""What applying costs on real SSH hosts: for 3 and 6 test hosts (network namespaces with their own sshd),
the cold apply (install, start, add a model, start a worker on each), the no-change apply, and a bare pyinfra
run of one no-op command over the same hosts as the baseline. Target: no-change apply <= 2x the bare run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import hosts as test_hosts  # noqa: E402
from tests.fleet import make_fleet  # noqa: E402
from tests.models import fetch_smollm2  # noqa: E402


def timed(command: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return elapsed


def measure(count: int, model: Path, runs: int) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix=f"rbee-apply-{count}-"))
    made = test_hosts.up(count)
    try:
        fleet = make_fleet(work, f"file://{model}")
        port = fleet.queen_url.rsplit(":", 1)[1]
        hives = "".join(
            f"  - name: {host.name}\n    connection: {{ssh: {{host: {host.address}, user: root, key: '{made.key}', "
            f"known_hosts: '{made.known_hosts}'}}}}\n    python: '{sys.executable}'\n    data_dir: /srv/rbee\n"
            for host in made.hosts
        )
        workers = "".join(f"  - {{model: smollm2, hive: {host.name}}}\n" for host in made.hosts)
        fleet.spec.write_text(
            f"queen: {{listen: '127.0.0.1:{port}'}}\nhives:\n{hives}"
            f"models:\n  - {{name: smollm2, source: 'file://{model}'}}\nworkers:\n{workers}"
        )
        rbee = [sys.executable, "-m", "rbee"]
        cold = timed([*rbee, "apply", str(fleet.spec), "--yes"], fleet.env, work)
        noop = statistics.median(
            timed([*rbee, "apply", str(fleet.spec), "--yes"], fleet.env, work) for _ in range(runs)
        )
        timed([*rbee, "inventory", str(fleet.spec), "--dir", str(work / "inventory")], fleet.env, work)
        pyinfra = [
            str(Path(sys.executable).parent / "pyinfra"),
            "-y",
            str(work / "inventory" / "hive.py"),
            "exec",
            "--",
            "true",
        ]
        bare = statistics.median(timed(pyinfra, fleet.env, work) for _ in range(runs))
        timed([*rbee, "destroy", str(fleet.spec), "--yes"], fleet.env, work)
    finally:
        test_hosts.down(made=made)
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return {"cold_s": cold, "noop_s": noop, "bare_pyinfra_s": bare, "ratio": noop / bare}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    why = test_hosts.available()
    if why:
        raise SystemExit(f"bench/apply.py needs test hosts: {why}")
    model = fetch_smollm2(Path(tempfile.gettempdir()) / "rbee-smollm2")
    results = {count: measure(count, model, args.runs) for count in (3, 6)}
    for count, result in results.items():
        print(
            f"{count} hosts: cold apply {result['cold_s']:.2f} s, no-change apply {result['noop_s']:.2f} s, "
            f"bare pyinfra no-op {result['bare_pyinfra_s']:.2f} s, ratio {result['ratio']:.2f}"
        )
    met = all(result["ratio"] <= 2.0 for result in results.values())
    print(
        "RESULT apply "
        + " ".join(
            f"cold{count}_s={r['cold_s']:.2f} noop{count}_s={r['noop_s']:.2f} bare{count}_s={r['bare_pyinfra_s']:.2f} "
            f"ratio{count}={r['ratio']:.2f}"
            for count, r in results.items()
        )
        + f" target_met={'yes' if met else 'no'}"
    )


if __name__ == "__main__":
    main()
