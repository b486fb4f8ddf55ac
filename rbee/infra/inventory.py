"""`rbee inventory`: a pyinfra inventory module of the hives, for running deploys/ by hand."""

from __future__ import annotations

from collections.abc import Iterable

from rbee.infra.job import hive_names, job_for, ssh_host_data
from rbee.spec.schema import HiveFile, HiveSpec


def inventory(
    hives: Iterable[HiveSpec], fleet_key_file: str, spec: HiveFile | None = None, authority_dir: str | None = None
) -> str:
    """The module's text; it names the fleet key's file (each hive's credential is derived from it when the
    install runs) and, for hives that serve TLS, the fleet CA's folder and the names their certificate must
    hold (the install issues it there, on this machine), never a secret."""
    hives = list(hives)
    by_name = {hive.name: hive for hive in hives}
    entries = []
    for host in job_for(hives, (), None, spec=spec).hosts:
        data = host.data.pyinfra()
        data.pop("rbee_token", None)
        data["rbee_fleet_key_file"] = fleet_key_file
        if by_name[host.name].tls and authority_dir is not None:
            data["rbee_authority_dir"] = authority_dir
            data["rbee_tls_names"] = list(hive_names(by_name[host.name]))
        if host.ssh is not None:
            data.update(ssh_host_data(host.ssh))
        name = "@local" if host.ssh is None else host.name
        entries.append(f"    ({name!r}, {data!r}),")
    return (
        '"""pyinfra inventory written by `rbee inventory` from hive.yaml; regenerate it rather than edit it."""\n\n'
        "hives = [\n" + "\n".join(entries) + "\n]\n"
    )
