"""Install and start the rbee hive on every host of an inventory made by `rbee inventory hive.yaml`:

    pyinfra inventory/hive.py deploys/hive.py

The same operations `rbee apply` runs; each does nothing where nothing is needed, and says so.
"""

from rbee.infra import operations

operations.rbee_ready(name="the hive's Python runs this rbee")
operations.hive_installed(name="hive config and cluster token are in place")
operations.hive_running(name="hive daemon is running")
