"""How the service runs: the `journey` command, the local stack and the demo."""
