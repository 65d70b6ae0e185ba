"""Training-step time of the numpy chain-rule engine against the torch engine.

One step = forward + backward + SGD update on the flat vector, both engines on
1 thread (torch.set_num_threads(1), BLAS limited with threadpoolctl), same
model spec, same initial parameters, same batch. Models: mlp 784-200-200-10 at
batch 10 and 64; cnn (McMahan et al. 2017) on 28x28 inputs at batch 10 and 64.
Targets: numpy <= 1.5x torch on mlp, <= 3x on cnn.

    python bench/engines.py [--steps 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_info, threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clients.models.engines import build_model  # noqa: E402
from clients.models.spec import Architecture, build_spec, init_params  # noqa: E402
from clients.optim import SGD  # noqa: E402

CASES = [("mlp", 10), ("mlp", 64), ("cnn", 10), ("cnn", 64)]


def step_seconds(engine: str, name: str, batch: int, steps: int) -> float:
    """Median seconds of one training step (after a warm-up)."""
    spec = build_spec(name, (1, 28, 28), 10, Architecture(hidden=[200, 200]))
    model = build_model(spec, engine)
    model.params[:] = init_params(spec, 0)
    rng = np.random.default_rng(0)
    x = rng.random((batch, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    optimizer = SGD(0.01)
    times = []
    for i in range(steps + 5):
        start = time.perf_counter()
        model.loss_and_grad(x, y)
        optimizer.step(model.params, model.grad)
        if i >= 5:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with threadpool_limits(args.threads):
        blas = ", ".join(
            f"{i['internal_api']} {i.get('architecture', '')}"
            for i in threadpool_info()
            if i["user_api"] == "blas"
        )
        print(f"threads: {args.threads}; numpy BLAS: {blas}")
        print(f"{'model':<6} {'batch':>5} {'numpy ms':>9} {'torch ms':>9} {'numpy/torch':>11}")
        for name, batch in CASES:
            steps = args.steps if name == "mlp" else max(20, args.steps // 5)
            ours = step_seconds("numpy", name, batch, steps)
            theirs = step_seconds("torch", name, batch, steps)
            print(f"{name:<6} {batch:>5} {ours * 1e3:>9.3f} {theirs * 1e3:>9.3f} {ours / theirs:>11.2f}")


if __name__ == "__main__":
    main()
