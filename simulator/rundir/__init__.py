"""The run directory on disk: config.yaml, run.json, metrics.jsonl, clients.jsonl,
summary.json, model.safetensors, checkpoints/.

Metrics are appended one line per round and never rewritten; every file that is
replaced is written to a temporary name first and moved into place; every file opened
here must be a regular file (no link followed, no FIFO or device: ``files``).
``directory`` makes a run directory and locks it, ``metrics`` holds the logs,
``checkpoints`` the model and checkpoint files, ``summary`` reads summary.json back.
"""
