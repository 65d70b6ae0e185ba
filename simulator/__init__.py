"""How a run is driven: config, CLI, Ray pool, round loop, checkpoints, metrics, reports.

``from simulator import Simulation``; ``Simulation.from_yaml(path, overrides={...}).run()``.
"""

__all__ = ["History", "Simulation"]


def __getattr__(name: str):
    # Lazy, so `fedsim validate` and `fedsim report` do not pay for importing Ray and torch.
    if name in __all__:
        from simulator.driver import simulation

        return getattr(simulation, name)
    raise AttributeError(f"module 'simulator' has no attribute {name!r}")
