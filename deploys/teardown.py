"""Stop the rbee hive (it stops its workers first) and remove what rbee installed, on every host of an
inventory made by `rbee inventory hive.yaml`:

    pyinfra inventory/hive.py deploys/teardown.py
"""

from rbee.infra import operations

operations.hive_stopped(name="hive daemon is stopped")
operations.hive_uninstalled(name="rbee's files are removed")
