"""One HTTP client per daemon (hive, queen, worker), as the other programs see its API."""
