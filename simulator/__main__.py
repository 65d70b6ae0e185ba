from simulator.cli import entry_point

entry_point()
