"""Command-line tools: f3rm-train, f3rm-sim, f3rm-ros."""
