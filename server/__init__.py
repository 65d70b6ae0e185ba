"""What the server does to updates: sampling, aggregation, server optimisers, evaluation.

Pure functions and small classes over flat numpy arrays. No Ray.
"""
