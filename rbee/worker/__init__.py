"""Workers: one process per model replica. Loads the model, executes requests, streams tokens."""
