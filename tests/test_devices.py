"""The device code path (vectors resident as torch tensors), run on the host.

CI has no GPU, so the path a CUDA worker takes is exercised with
``device="cpu"``: the same tensors, optimisers and transforms, only the
device differs. Elementwise float32 arithmetic is correctly rounded in numpy
and torch alike, so the resident path must give the host path's bits; only
norm-based clipping reduces in a different order, and gets a tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from clients.models import arrays
from clients.models.engines import build_model
from clients.models.spec import Architecture, build_spec, init_params
from clients.optim import SGD, Adam
from clients.training import (
    ClientTask,
    LocalTrainingConfig,
    ScoreTask,
    client_gradient,
    client_scores,
    train_client,
)

DIGITS = load_digits()
X = (DIGITS.data[:300] / 16).astype(np.float32).reshape(-1, 1, 8, 8)
Y = DIGITS.target[:300].astype(np.int64)
SHARD = np.arange(7, 160, 3)


def _pair(name: str, **spec_args):
    spec = build_spec(name, (1, 8, 8), 10, Architecture(**spec_args))
    return spec, build_model(spec, "torch"), build_model(spec, "torch", device="cpu")


def _config(**extra) -> LocalTrainingConfig:
    base = dict(lr=0.05, momentum=0.0, weight_decay=0.0, epochs=2, batch_size=10)
    base.update(extra)
    return LocalTrainingConfig(**base)


def _task(model, start, cfg: LocalTrainingConfig, seed: int, client_id: int = 0, **extra) -> ClientTask:
    """One client's pass over this file's data (X, Y, SHARD), its data order drawn from ``seed``."""
    return ClientTask(
        model=model, start=start, x=X, y=Y, shard=SHARD, cfg=cfg,
        rng=np.random.default_rng(seed), client_id=client_id, **extra,
    )  # fmt: skip


CASES = {
    "sgd": {},
    "momentum_wd": {"momentum": 0.9, "weight_decay": 1e-3},
    "adam": {"optimizer": "adam", "lr": 0.01, "weight_decay": 1e-4},
    "fedprox": {"prox_mu": 0.1},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_resident_training_gives_the_host_bits(case):
    spec, host, resident = _pair("mlp", hidden=[32, 16])
    start = init_params(spec, 3)
    cfg = _config(**CASES[case])
    results = [train_client(_task(m, start, cfg, 11, client_id=5)) for m in (host, resident)]
    assert isinstance(resident.params, torch.Tensor) and isinstance(host.params, np.ndarray)
    assert isinstance(results[1].update, np.ndarray)
    assert results[0].update.tobytes() == results[1].update.tobytes()
    assert results[0].train_loss == results[1].train_loss
    assert results[0].steps == results[1].steps == 2 * 6


def test_resident_training_honours_the_mask_and_scaffold_correction():
    spec, host, resident = _pair("mlp", hidden=[24])
    start = init_params(spec, 1)
    mask = np.random.default_rng(0).random(start.size) > 0.5
    start = start * mask
    correction = np.random.default_rng(1).normal(0, 1e-3, start.size).astype(np.float32)
    cfg = _config(momentum=0.9, weight_decay=1e-3)
    updates = [
        train_client(_task(m, start, cfg, 2, correction=correction, mask=mask)).update
        for m in (host, resident)
    ]
    assert updates[0].tobytes() == updates[1].tobytes()
    assert not updates[1][~mask].any()  # pruned weights stay exactly zero


def test_resident_local_clipping_agrees_within_float32_rounding():
    """The clipping norm is a reduction (numpy and torch sum in different orders),
    so the scale factor may differ in its last bit: 1e-5 relative covers that."""
    spec, host, resident = _pair("mlp", hidden=[32])
    start = init_params(spec, 0)
    cfg = _config(max_grad_norm=0.5)
    updates = [train_client(_task(m, start, cfg, 4)).update for m in (host, resident)]
    np.testing.assert_allclose(updates[1], updates[0], rtol=1e-5, atol=1e-7)
    unclipped = train_client(_task(host, start, _config(), 4)).update
    assert np.abs(updates[0] - unclipped).max() > 1e-3  # the clip bound was active


def test_resident_fedsgd_gradient_and_pruning_scores_match_the_host():
    spec, host, resident = _pair("cnn", conv_channels=[4, 8], fc_width=16)
    start = init_params(spec, 0)
    cfg = _config(batch_size=16)
    grads = [client_gradient(_task(m, start, cfg, 5)).update for m in (host, resident)]
    assert grads[0].tobytes() == grads[1].tobytes()
    scores = [
        client_scores(
            ScoreTask(kind="squared_gradient", model=m, params=start, x=X, y=Y, shard=SHARD, batch_size=16)
        )
        for m in (host, resident)
    ]
    assert scores[0].tobytes() == scores[1].tobytes()


def test_resident_evaluation_matches_the_host():
    spec, host, resident = _pair("mlp", hidden=[16])
    params = init_params(spec, 2)
    for model in (host, resident):
        model.load_params(params)
    assert host.evaluate(X, Y, 64) == resident.evaluate(X, Y, 64)


@pytest.mark.parametrize(
    "optimizer",
    [SGD(0.1, momentum=0.9, weight_decay=0.01), Adam(0.01, weight_decay=0.01)],
    ids=["sgd", "adam"],
)
def test_optimisers_step_numpy_and_torch_vectors_to_the_same_bits(optimizer):
    rng = np.random.default_rng(0)
    params = rng.normal(size=1000).astype(np.float32)
    grads = [rng.normal(size=1000).astype(np.float32) for _ in range(3)]
    on_host, on_tensor = params.copy(), torch.from_numpy(params.copy())
    for grad in grads:
        optimizer.step(on_host, grad)
    optimizer.reset()
    for grad in grads:
        optimizer.step(on_tensor, torch.from_numpy(grad))
    assert on_host.tobytes() == arrays.to_numpy(on_tensor).tobytes()
    assert not np.array_equal(on_host, params)


def test_the_numpy_engine_refuses_a_device():
    spec = build_spec("mlp", (1, 8, 8), 10, Architecture(hidden=[8]))
    with pytest.raises(ValueError, match="host only"):
        build_model(spec, "numpy", device="cpu")


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@needs_cuda
def test_cuda_training_is_reproducible_and_close_to_the_host():
    """Same GPU, same bits; against the host only closeness: cuBLAS and CPU kernels
    reduce in different orders (float32 over 12 steps: 1e-4 relative is ample)."""
    from clients.devices import make_cuda_deterministic

    make_cuda_deterministic()
    spec = build_spec("cnn", (1, 8, 8), 10, Architecture(conv_channels=[4, 8], fc_width=16))
    start = init_params(spec, 0)
    cfg = _config(momentum=0.9)
    host = build_model(spec, "torch")
    gpu = [build_model(spec, "torch", device="cuda") for _ in range(2)]
    updates = [train_client(_task(m, start, cfg, 6)).update for m in [host, *gpu]]
    assert updates[1].tobytes() == updates[2].tobytes()
    np.testing.assert_allclose(updates[1], updates[0], rtol=1e-4, atol=1e-6)
