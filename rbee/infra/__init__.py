"""pyinfra's wing: rbee's own operations and facts for hives, the systemd unit, and the job that runs them in a
subprocess (pyinfra is gevent-based and never runs inside an asyncio process)."""
