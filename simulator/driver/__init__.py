"""Driving a run: the Simulation and its round loop, the Ray cluster and worker pool,
federated evaluation, sweeps and pruning."""
