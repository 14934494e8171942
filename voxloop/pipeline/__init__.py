"""The engine: frames, stages, the graph runner and sessions. It knows nothing of any model."""
