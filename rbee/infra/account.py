"""Whom a hive's system unit runs as: a user of its own (`rbee` unless hive.yaml names another), never root.

A hive serves the network, so a flaw in it or in an engine must not be root on the host. The unit runs as this
user, which owns what the hive writes (its state, logs, models, caches); the hive's code (its virtualenv and the
wheels it came from) stays root's, so a compromised hive cannot change what root runs at the next apply. And
because the user owns the data dir, it could put a symbolic link where root is about to write: each apply first
checks that nothing root writes there is a link and that the code folders are still root's, and refuses if not.
All of it is shell text (pure); operations.py decides when to run it.
"""

from __future__ import annotations

import shlex

from rbee.infra import shell

GPU_GROUPS = ("video", "render")
"""The groups that own GPU device nodes on Linux (/dev/dri, and /dev/nvidia* where the driver sets a group)."""

HIVE_WRITES = (
    "logs",
    "models",
    "workers",
    "cache",
    "tls",
    "hive.json",
    "hive.token",
    "hive.db",
    "hive.db-wal",
    "hive.db-shm",
)
"""What the hive's user owns in the data dir (besides the dir itself)."""

ROOT_KEEPS = ("venv", "venv/bin", "wheels", "wheelhouse")
"""The hive's code: root's alone."""

ROOT_WRITES = ("hive.json", "hive.token", "tls", "tls/hive.pem", "tls/hive.key", "tls/ca.pem", "logs", "models")
"""Where root writes on every apply; a link there would carry root's write elsewhere."""


def made(name: str) -> str:
    """The system user and its group exist (made without a home or a login shell when missing)."""
    user = shlex.quote(name)
    return (
        f"id -u {user} >/dev/null 2>&1 || useradd --system --user-group --no-create-home "
        f"--home-dir /nonexistent --shell /usr/sbin/nologin {user} || "
        + _fail(
            f"rbee: could not create the user {name} that the hive runs as (useradd failed); create it by hand, "
            "or set hives[].service_user: root"
        )
    )


def untampered(data_dir: str) -> str:
    """Fails, with a sentence, when a path root is about to write in the data dir is a symbolic link, or a code
    folder is not root's or can be written by others."""
    links = " ".join(shell.path(f"{data_dir}/{name}") for name in ROOT_WRITES)
    code = " ".join(shell.path(f"{data_dir}/{name}") for name in ROOT_KEEPS)
    return (
        f'found="$(find {links} -maxdepth 0 -type l 2>/dev/null; '
        f'find {code} -maxdepth 0 \\( -type l -o \\! -user 0 -o -perm /022 \\) 2>/dev/null)"; '
        f"if [ -n \"$found\" ]; then printf '%s%s%s\\n' "
        + shlex.quote(f"rbee: refusing to install into {data_dir}: links, or code folders not root's: ")
        + ' "$found" '
        + shlex.quote(". The hive's user should not have made them; see what happened there, remove them, apply again")
        + " >&2; exit 1; fi"
    )


def handed_over(data_dir: str, name: str) -> str:
    """The data dir and what the hive writes are the hive user's; links are changed, never followed."""
    owner = shlex.quote(f"{name}:{name}")
    paths = " ".join(shell.path(f"{data_dir}/{item}") for item in HIVE_WRITES)
    return (
        f"mkdir -p {shell.path(data_dir + '/workers')} {shell.path(data_dir + '/cache')} && "
        f"chown -h {owner} {shell.path(data_dir)} && "
        f'for p in {paths}; do if [ -e "$p" ]; then chown -hR {owner} "$p" || exit 1; fi; done'
    )


def runnable(python: str, name: str) -> str:
    """Fails, with a sentence, when the hive's user cannot run rbee with the hive's Python (a Python under a
    private home, say)."""
    return f"runuser -u {shlex.quote(name)} -- {shell.path(python)} -c 'import rbee' >/dev/null 2>&1 || " + _fail(
        f"rbee: the user {name}, whom the hive runs as, cannot run rbee with {python}: install rbee where that "
        "user can read it (leave hives[].python out and rbee installs its own), or set hives[].service_user: root"
    )


def _fail(sentence: str) -> str:
    """A shell group that prints the sentence (quoted: it may hold paths from hive.yaml) and fails."""
    return f"{{ printf '%s\\n' {shlex.quote(sentence)} >&2; exit 1; }}"
