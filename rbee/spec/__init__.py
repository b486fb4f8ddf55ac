"""hive.yaml: its schema, its loading, and the checks across its sections.

No I/O here beyond reading the file the user named: no network, no database, no processes.
"""
