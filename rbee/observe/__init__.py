"""Observation: ask every hive what it has, concurrently, each within its own timeout."""
