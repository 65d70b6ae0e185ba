"""Simulator overhead against the perfect-parallel floor.

Workload: 1,000 clients, 100 per round, 50 training samples each (784-dim
synthetic inputs, 10 classes), MLP 784-200-200-10, 1 local epoch, batch 10,
lr 0.05, 5 rounds. In the same process we time the same client work done by a
plain loop with no Ray (copy weights, train each sampled client, average) on 1
torch thread: T1 per round. The floor is T1 / workers; the ratio
simulator / floor is 1.0 at zero overhead.

    python bench/overhead.py [--workers 2] [--rounds 5] [--per-round 100] [--repeat 3]

The machine is noisy, so the whole measurement (simulator, then plain loop)
is repeated and every repeat's ratio is printed with their median.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clients.models.spec import init_params  # noqa: E402
from clients.models.torch_engine import TorchModel  # noqa: E402
from clients.training import PURPOSE_DATA_ORDER, client_rng, train_client  # noqa: E402
from clients.worker import add_weighted  # noqa: E402
from server.sampling import sample_clients  # noqa: E402
from simulator import Simulation  # noqa: E402
from simulator.config import Config, apply_overrides, from_dict  # noqa: E402
from simulator.setup import build_dataset, build_model_spec, build_partition, local_training  # noqa: E402


def workload(workers: int, rounds: int, per_round: int) -> Config:
    overrides = {
        "name": "bench-overhead",
        "rounds": rounds,
        "data.dataset": "synthetic",
        "data.partition": "natural",
        "data.num_clients": 1000,
        # 60 per device, 10 held out for the server's test set -> 50 training samples each.
        "data.synthetic.samples_per_device": 60,
        "data.test_fraction": 1 / 6,
        "data.synthetic.num_features": 784,
        "model.name": "mlp",
        "model.hidden": [200, 200],
        "client.lr": 0.05,
        "client.epochs": 1,
        "client.batch_size": 10,
        "server.clients_per_round": per_round,
        "server.eval_every": rounds,
        "runtime.workers": workers,
        "runtime.cpus_per_worker": 1.0,
        "runtime.checkpoint_every": rounds,
    }
    return from_dict(apply_overrides({}, overrides))


def time_simulator(cfg: Config) -> list[float]:
    """Wall-clock seconds per round, end of round to end of round (so metrics writing,
    checkpoints and the next broadcast count too); the first round is timed from its
    own row."""
    ends: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        history = Simulation(
            cfg, Path(tmp) / "run", quiet=True, on_round_end=lambda row: ends.append(time.perf_counter())
        ).run()
    return [history.rows[0]["seconds"]] + [b - a for a, b in zip(ends[:-1], ends[1:], strict=True)]


def time_plain_loop(cfg: Config) -> list[float]:
    """The same client work with no Ray, no pool, no object store: 1 torch thread."""
    torch.set_num_threads(1)
    dataset = build_dataset(cfg.data, cfg.seed)
    parts = build_partition(dataset, cfg.data, cfg.seed)
    spec = build_model_spec(cfg.model, dataset)
    model, training = TorchModel(spec), local_training(cfg)
    params = init_params(spec, cfg.seed)
    seconds = []
    for round_ in range(1, cfg.rounds + 1):
        start = time.perf_counter()
        total, weight = np.zeros_like(params), 0
        for cid in sample_clients(cfg.seed, round_, cfg.data.num_clients, cfg.sampled_per_round()):
            rng = client_rng(cfg.seed, round_, int(cid), PURPOSE_DATA_ORDER)
            result = train_client(
                model, params, dataset.x_train, dataset.y_train, parts[cid], training, rng, cid
            )
            add_weighted(total, result.update, result.num_samples)
            weight += result.num_samples
        params = (params + total.astype(np.float64) / weight).astype(np.float32)
        seconds.append(time.perf_counter() - start)
    return seconds


def measure(cfg: Config, workers: int) -> tuple[float, float]:
    """(simulator median s/round, T1 median s/round), measured back to back."""
    return statistics.median(time_simulator(cfg)), statistics.median(time_plain_loop(cfg))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cfg = workload(args.workers, args.rounds, args.per_round)
    print(
        f"workload: 1000 clients, {args.per_round}/round, 50 samples each, MLP 784-200-200-10, "
        f"E=1, B=10, {args.rounds} rounds, {args.workers} workers, "
        f"{cfg.runtime.reduction_groups} reduction groups"
    )
    print("repeat  simulator s/round  T1 s/round  floor s/round  ratio")
    ratios = []
    for i in range(args.repeat):
        sim, t1 = measure(cfg, args.workers)
        floor = t1 / args.workers
        ratios.append(sim / floor)
        print(f"{i + 1:>6}  {sim:>17.3f}  {t1:>10.3f}  {floor:>13.3f}  {sim / floor:.3f}")
    print(f"median ratio simulator / floor: {statistics.median(ratios):.3f}  (1.0 = zero overhead)")
    model_mib = _model_bytes(cfg) / 2**20
    groups = min(cfg.runtime.reduction_groups, cfg.sampled_per_round())
    print(
        f"object store per round: the global model put once ({model_mib:.2f} MiB) + {groups} float32 "
        f"group sums ({groups * model_mib:.2f} MiB) = {(1 + groups) * model_mib:.2f} MiB, "
        f"against {cfg.sampled_per_round() * model_mib:.1f} MiB if every client's update travelled"
    )


def _model_bytes(cfg: Config) -> int:
    spec = build_model_spec(cfg.model, build_dataset(cfg.data, cfg.seed))
    return spec.layout().size * 4


if __name__ == "__main__":
    main()
