"""The automatic choices of a simulation, apart from running it (see each module)."""
