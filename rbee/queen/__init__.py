"""The queen: holds the applied spec and the registry, routes inference to workers and relays their streams."""
