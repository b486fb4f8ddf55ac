"""The keeper: what `rbee` does on the operator's machine. cli.py declares the commands; these modules do the
work: the fleet flow (plan, apply, destroy), status and models, progress on the terminal, RBEE_HOME, the queen
process."""
