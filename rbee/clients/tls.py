"""The fleet CA this process trusts, for every https link it opens (queen to hives and workers, a hive to its
workers and the queen, a worker to its hive).

It is pinned once per process at start (`pin`), by the path of a file on this machine: the keeper's
RBEE_HOME/tls/ca.pem, or the copy the install put in a hive's data dir. From then on only certificates that CA
signed are accepted, and each must name the host it is reached at; the system's public CAs are not consulted.
The file may appear later (the first apply that adds an SSH hive makes the CA): the one context this process
hands out learns it then, so clients made before it exists trust it too.
"""

from __future__ import annotations

import ssl
from pathlib import Path

_pinned: ssl.SSLContext | None = None
_ca_file: Path | None = None
_loaded = False
_default: ssl.SSLContext | None = None


def pin(ca_file: str | Path | None) -> None:
    """Trust only the CA in `ca_file` (now or once it exists); None leaves the system's default in place."""
    global _pinned, _ca_file, _loaded
    if ca_file is None:
        return
    made = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificates and host names
    made.minimum_version = ssl.TLSVersion.TLSv1_2
    _pinned, _ca_file, _loaded = made, Path(ca_file).expanduser(), False
    context()


def context() -> ssl.SSLContext:
    """What to verify rbee's own servers with: the pinned fleet CA, or (none pinned) the system's default."""
    global _loaded, _default
    if _pinned is None:
        if _default is None:
            _default = ssl.create_default_context()
        return _default
    if not _loaded and _ca_file is not None and _ca_file.is_file():
        _pinned.load_verify_locations(cafile=str(_ca_file))
        _loaded = True
    return _pinned
