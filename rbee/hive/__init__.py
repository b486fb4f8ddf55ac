"""The hive daemon: one per machine. Model catalog, downloads, worker supervisor; it executes, the queen decides."""
