"""The training objective of finished runs: the loss FedProx's figures plot as "training loss".

    python bench/train_objective.py RUN_DIR [RUN_DIR ...]

For each run, the final model's (model.safetensors) mean loss and accuracy over every
training row its clients hold, f(w) = sum_k (n_k / n) F_k(w) with F_k a client's mean loss
over its n_k rows, beside the last evaluation's test accuracy and loss. A run's rows log
``train_loss``, the clients' mean minibatch loss *during* local training (each step on a
moving local model), which is another quantity. Runs whose clients' data are generated
on the workers (large synthetic populations) hold no training rows on the driver and
are skipped with a note. Loads the run's data and model as ``fedsim prune`` does (a config
naming user code runs it); starts no Ray.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from server.evaluation import evaluate
from simulator.config.loading import load_run_config
from simulator.driver.prune import load_model_params
from simulator.driver.run_state import RunState
from simulator.rundir.metrics import read_metrics


def training_objective(run_dir: Path) -> tuple[float, float | None] | None:
    """(mean loss, accuracy) of the run's final model over its clients' training rows;
    None when the driver holds no training rows."""
    cfg = load_run_config(run_dir)
    state = RunState(cfg, run_dir)
    rows = np.unique(state.shards.indices)  # each row once, as the sum over clients weighs it
    if not len(rows):
        return None
    params = load_model_params(run_dir, state)
    result = evaluate(
        state.eval_model, params, state.x_train[rows], state.y_train[rows], cfg.server.eval_batch_size
    )
    return result.loss, result.accuracy


def last_evaluation(run_dir: Path) -> dict:
    rows = read_metrics(run_dir / "metrics.jsonl")
    return [row for row in rows if row.get("test_loss") is not None][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories")
    args = parser.parse_args()
    print("| run | training objective | training accuracy | test accuracy | test loss |")
    print("|---|---|---|---|---|")
    for run_dir in args.runs:
        found = training_objective(run_dir)
        test = last_evaluation(run_dir)
        tested = f"{_shown(test.get('test_accuracy'))} | {test['test_loss']:.4f}"
        if found is None:
            print(f"| {run_dir.name} | (no training rows on the driver) | | {tested} |")
        else:
            print(f"| {run_dir.name} | {found[0]:.4f} | {_shown(found[1])} | {tested} |")


def _shown(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"  # regression has no accuracy


if __name__ == "__main__":
    main()
