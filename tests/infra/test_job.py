"""The job handed to the pyinfra subprocess: typed, and what each host needs and no more."""

from __future__ import annotations

from pathlib import Path

from rbee.api.credentials import FleetCredentials
from rbee.infra.job import Job, Step, job_for
from rbee.spec import backends, load

CREDENTIALS = FleetCredentials("rbo_operator-of-the-job-tests-000000000000", "fleet key of the job tests")
SPEC = """
hives:
  - {name: mac, connection: {ssh: {host: mac.lan, user: ann}}, data_dir: /Users/ann/rbee}
  - {name: box, connection: {ssh: {host: box.lan}}, python: /opt/rbee/bin/python, backends: [gguf]}
  - {name: here}
models:
  - {name: qwen, source: 'hf://Qwen/Qwen2.5-0.5B-Instruct'}
  - {name: smol, source: 'file:///models/smol.gguf'}
  - {name: minilm, source: 'hf://sentence-transformers/all-MiniLM-L6-v2', kind: embedding}
workers:
  - {model: qwen, hive: mac}
  - {model: minilm, hive: mac}
  - {model: smol, hive: box}
  - {model: smol, hive: here}
"""


def test_a_hive_in_its_own_venv_carries_its_workloads_for_the_extras() -> None:
    spec = load.loads(SPEC)
    job = job_for(spec.hives, [Step.PYTHON, Step.INSTALL, Step.START], CREDENTIALS, Path("/w/rbee.whl"), spec)
    mac, box, here = job.hosts
    assert mac.data.rbee_wheel == "/w/rbee.whl" and mac.data.rbee_python == "/Users/ann/rbee/venv/bin/python"
    assert mac.data.rbee_workloads == (
        backends.Workload(kind="text", format="safetensors"),
        backends.Workload(kind="embedding", format="safetensors"),
    )
    assert box.data.rbee_wheel is None and box.data.rbee_workloads == (), "a hive with its own python installs nothing"
    assert box.data.rbee_backends == ("gguf",)
    assert here.ssh is None and here.data.rbee_service == "process", "a local hive runs beside the queen"
    assert [host.data.rbee_token for host in job.hosts] == [CREDENTIALS.hive(name) for name in ("mac", "box", "here")]
    assert len({host.data.rbee_token for host in job.hosts}) == 3, "each hive gets its own credential"


def test_the_job_crosses_into_the_subprocess_unchanged() -> None:
    spec = load.loads(SPEC)
    job = job_for(spec.hives, [Step.FACTS], CREDENTIALS, connect_timeout=3)
    assert Job.model_validate_json(job.model_dump_json()) == job
    assert "rbee_wheel" not in job.hosts[0].data.pyinfra(), "unset host data is left out of pyinfra's inventory"
