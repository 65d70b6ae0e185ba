"""The chain-rule engine: NumPy modules with forward/backward over flat-vector views."""
