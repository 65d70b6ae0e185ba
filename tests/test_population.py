"""Large populations: clients' data generated on the workers from (seed, id)."""

from __future__ import annotations

import numpy as np

from clients.data.datasets import SyntheticClients
from simulator import Simulation
from tests.conftest import ROOT

POPULATION = ROOT / "configs" / "population_100k.yaml"


def test_a_device_is_the_same_wherever_it_is_generated():
    gen = SyntheticClients(0, 1.0, 1.0, 60, 10, 25, 0.2)
    a, b = gen.device(123), gen.device(123)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b, strict=True))
    assert a[0].tobytes() != gen.device(124)[0].tobytes()
    assert a[0].shape == (gen.train_size(), 60) and a[0].dtype == np.float32
    assert len(a[0]) + len(a[2]) == 25


def test_100k_clients_run_two_rounds_of_1000(ray_cluster, tmp_path):
    history = Simulation.from_yaml(
        POPULATION,
        {"rounds": 2, "runtime.workers": 2, "runtime.cpus_per_worker": 1.0},
        run_dir=tmp_path / "pop",
    ).run()
    assert [row["num_clients"] for row in history.rows] == [1000, 1000]
    assert all(row["num_samples"] == 1000 * 20 for row in history.rows)  # 25 per device, 5 held out
    assert history.rows[-1]["test_accuracy"] is not None
