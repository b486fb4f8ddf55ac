"""`rbee inventory`: a pyinfra inventory module of the hives, for running deploys/ by hand."""

from __future__ import annotations

from collections.abc import Iterable

from rbee.infra.job import job_for, ssh_host_data
from rbee.spec.schema import HiveFile, HiveSpec


def inventory(hives: Iterable[HiveSpec], fleet_key_file: str, spec: HiveFile | None = None) -> str:
    """The module's text; it names the fleet key's file (each hive's credential is derived from it when the
    install runs), never a secret."""
    entries = []
    for host in job_for(hives, (), None, spec=spec).hosts:
        data = host.data.pyinfra()
        data.pop("rbee_token", None)
        data["rbee_fleet_key_file"] = fleet_key_file
        if host.ssh is not None:
            data.update(ssh_host_data(host.ssh))
        name = "@local" if host.ssh is None else host.name
        entries.append(f"    ({name!r}, {data!r}),")
    return (
        '"""pyinfra inventory written by `rbee inventory` from hive.yaml; regenerate it rather than edit it."""\n\n'
        "hives = [\n" + "\n".join(entries) + "\n]\n"
    )
