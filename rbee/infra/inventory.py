"""`rbee inventory`: a pyinfra inventory module of the hives, for running deploys/ by hand."""

from __future__ import annotations

from collections.abc import Iterable

from rbee.infra.job import job_for, ssh_host_data
from rbee.spec.schema import HiveSpec


def inventory(hives: Iterable[HiveSpec], token_file: str) -> str:
    """The module's text; it names the token file, never the token."""
    entries = []
    for host in job_for(hives, (), "").hosts:
        data = host.data.pyinfra()
        del data["rbee_token"]
        data["rbee_token_file"] = token_file
        if host.ssh is not None:
            data.update(ssh_host_data(host.ssh))
        name = "@local" if host.ssh is None else host.name
        entries.append(f"    ({name!r}, {data!r}),")
    return (
        '"""pyinfra inventory written by `rbee inventory` from hive.yaml; regenerate it rather than edit it."""\n\n'
        "hives = [\n" + "\n".join(entries) + "\n]\n"
    )
