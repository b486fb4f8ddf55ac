"""Plans: what would change to make live state match hive.yaml. Pure values and pure functions; no I/O here."""
