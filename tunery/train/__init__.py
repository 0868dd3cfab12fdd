"""Training: one readable `train()` (engine), Vertex metric names (metrics), crash-safe checkpoints (checkpoints)."""
