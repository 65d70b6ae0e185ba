"""The run directory on disk: safe file access, metrics, checkpoints, the model and summaries."""
