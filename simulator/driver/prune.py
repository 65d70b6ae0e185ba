"""`fedsim prune RUN_DIR`: which weights the chain says matter.

Loads a run's final model, scores every weight by each method (magnitude;
saliency |w ⊙ g| and squared gradients computed federatedly by a sample of
clients on their own shards, averaged by samples; random as the baseline),
builds a mask per method and sparsity, evaluates the pruned model on the test
set (optionally after K federated fine-tuning rounds under the mask), and
writes prune.json plus charts. Nothing in the run directory is rewritten.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clients.errors import FedsimError
from server.evaluation import evaluate
from server.pruning import PRUNING_SCORES as METHODS
from server.pruning import build_mask, density, layer_densities
from server.sampling import sample_clients
from simulator.config.loading import load_run_config
from simulator.config.yaml_input import show
from simulator.driver.run_state import RunState
from simulator.driver.simulation import LoadedWorkers, Simulation
from simulator.report.progress import StepProgress
from simulator.report.prune_charts import write_prune_charts
from simulator.rundir.checkpoints import load_model
from simulator.rundir.files import write_json

# Each sparsity is a mask built and evaluated per method: a fine sweep of the curve is a
# few hundred; tens of thousands is a script gone wrong.
MAX_SPARSITIES = 1_000
# Fine-tuning trains methods x sparsities x rounds x clients per round clients: a million
# is days of a real study's fine-tuning; more is a typo.
MAX_FINETUNE_TRAININGS = 1_000_000


def load_model_params(run_dir: Path, state: RunState) -> np.ndarray:
    """The run's model.safetensors as one flat vector in the model's layout."""
    path = run_dir / "model.safetensors"
    if not os.path.lexists(path):
        raise FedsimError(f"{path}: no final model (did the run finish?)")
    tensors = load_model(path)
    params = state.layout.zeros()
    for slot in state.layout:
        if slot.name not in tensors or tensors[slot.name].shape != slot.shape:
            raise FedsimError(f"{path}: tensor {slot.name!r} {slot.shape} missing or of another shape")
        state.layout.view(params, slot.name)[...] = tensors[slot.name]
    return params


@dataclass(frozen=True, kw_only=True)
class PruneRequest:
    """What ``fedsim prune`` is asked: which masks of a finished run to build and evaluate."""

    run_dir: Path
    methods: list[str]
    sparsities: list[float]
    finetune_rounds: int = 0  # federated rounds under each mask, after the run's last
    scope: str = "global"  # a sparsity over all prunable weights, or per layer
    out_dir: Path | None = None  # where prune.json goes (default: the run directory)
    quiet: bool = True  # False shows each step


def prune_run(request: PruneRequest) -> Path:
    """Evaluate every (method, sparsity) mask; write prune.json (+ charts); return its path.
    More than MAX_SPARSITIES sparsities or MAX_FINETUNE_TRAININGS fine-tuning client
    trainings are refused before anything loads."""
    run_dir, methods, sparsities = request.run_dir, request.methods, request.sparsities
    _check_arguments(methods, sparsities)
    cfg = load_run_config(run_dir)
    _check_finetune_work(len(methods), len(sparsities), request.finetune_rounds, cfg.sampled_per_round())
    state = RunState(cfg, run_dir)
    trained = load_model_params(run_dir, state)
    with Simulation(cfg, run_dir, quiet=True).loaded_workers(state) as workers:
        steps = len(methods) * len(sparsities) * (1 + request.finetune_rounds)
        progress = StepProgress(steps, "prune", request.quiet)
        try:
            results = _evaluate_all(workers, trained, request, progress)
        finally:
            progress.close()
    report = {
        "run": str(run_dir),
        "scope": request.scope,
        "finetune_rounds": request.finetune_rounds,
        "baseline": _test_metrics(state, trained),
        "results": results,
    }
    out = Path(request.out_dir or run_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "prune.json"
    write_json(path, report)
    write_prune_charts(report, out)
    return path


def _check_arguments(methods: list[str], sparsities: list[float]) -> None:
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise FedsimError(f"--method: {show(bad[0])} not known; choose from {', '.join(METHODS)}")
    twice = [m for m in METHODS if methods.count(m) > 1]
    if twice:
        raise FedsimError(f"--method: {twice[0]} is listed twice")
    if len(sparsities) > MAX_SPARSITIES:
        raise FedsimError(
            f"--sparsity: {len(sparsities):,} values; at most {MAX_SPARSITIES:,} "
            "(each is a mask to build and evaluate per method)"
        )
    outside = [s for s in sparsities if not 0 <= s < 1]
    if outside:
        raise FedsimError(f"--sparsity: every value must be in [0, 1), got {outside[0]:g}")


def _check_finetune_work(methods: int, sparsities: int, rounds: int, per_round: int) -> None:
    """Refuse fine-tuning that would train more than MAX_FINETUNE_TRAININGS clients."""
    trainings = methods * sparsities * rounds * per_round
    if trainings > MAX_FINETUNE_TRAININGS:
        raise FedsimError(
            f"--finetune-rounds {rounds:,}: {methods} method{'s' * (methods > 1)} x {sparsities:,} "
            f"sparsit{'ies' if sparsities > 1 else 'y'} x {rounds:,} rounds x {per_round:,} clients "
            f"per round = {trainings:,} client trainings; at most {MAX_FINETUNE_TRAININGS:,} "
            "(fewer rounds, sparsities or methods)"
        )


def _evaluate_all(
    workers: LoadedWorkers, trained: np.ndarray, request: PruneRequest, progress: StepProgress
) -> list[dict]:
    state = workers.state
    cfg = state.cfg
    clients = sample_clients(cfg.seed, cfg.rounds + 1, cfg.data.num_clients, cfg.sampled_per_round())
    results = []
    for method in request.methods:
        scores = workers.scores(method, trained, clients)
        for sparsity in request.sparsities:
            mask = build_mask(scores, state.server.prunable, sparsity, state.layout, request.scope)
            row: dict[str, Any] = {
                "method": method,
                "sparsity": sparsity,
                "density": density(mask, state.server.prunable),
                "layer_density": layer_densities(mask, state.layout),
                **_test_metrics(state, trained * mask),
            }
            step = f"{method} sparsity {sparsity:g}"
            score = "accuracy" if "test_accuracy" in row else "loss"  # regression: loss only
            progress.advance(f"{step}: {score} {row[f'test_{score}']:.4f}")
            if request.finetune_rounds:
                tuned = _finetune(workers, trained * mask, mask, request.finetune_rounds, progress, step)
                row.update({f"finetuned_{k}": v for k, v in _test_metrics(state, tuned).items()})
            results.append(row)
    return results


def _test_metrics(state: RunState, params: np.ndarray) -> dict[str, float]:
    if state.server.buffers.size:  # a module model's running statistics, as the run left them
        state.eval_model.load_buffers(state.server.buffers)
    result = evaluate(state.eval_model, params, state.x_test, state.y_test, state.cfg.server.eval_batch_size)
    if result.accuracy is None:  # a regression model: its loss is all there is
        return {"test_loss": result.loss}
    return {"test_accuracy": result.accuracy, "test_loss": result.loss}


def _finetune(
    workers: LoadedWorkers,
    params: np.ndarray,
    mask: np.ndarray,
    rounds: int,
    progress: StepProgress,
    step: str,
) -> np.ndarray:
    """``rounds`` more federated rounds from ``params`` with ``mask`` fixed (the rounds
    after the run's last, so their samples are new)."""
    state = workers.state
    state.restart_server(params, mask)
    for done, round_ in enumerate(range(state.cfg.rounds + 1, state.cfg.rounds + 1 + rounds), 1):
        workers.train_round(round_)
        progress.advance(f"{step}: fine-tune round {done:,}/{rounds:,}")
    return state.server.params
