"""The simulated board and the scenario runner: the real firmware on the unix port, no hardware."""
