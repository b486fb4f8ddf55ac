"""Making a plan so: pyinfra operations for hives (run in a subprocess), hive HTTP calls, the queen process."""
