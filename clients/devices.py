"""Which device a worker trains on, from ``model.device`` and what Ray gave it.

Ray narrows ``CUDA_VISIBLE_DEVICES`` to the GPUs it assigned a worker (shared
ones too, for fractional ``num_gpus``), so a worker's GPU is always torch's
``cuda:0``. A worker holding several GPUs trains on the first.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from clients.errors import ClusterError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")


def worker_device(requested: str, gpus_per_worker: float) -> torch.device | None:
    """The torch device to keep the model on, or None for host memory (numpy arrays)."""
    if requested not in DEVICES:
        raise ValueError(f"unknown device {requested!r}; known: {', '.join(DEVICES)}")
    if requested == "cpu" or gpus_per_worker == 0:
        return None
    import torch  # here, not at the top: the config (and `fedsim validate`) need DEVICES only

    if torch.cuda.is_available():
        make_cuda_deterministic()
        return torch.device("cuda", 0)
    if requested == "auto":
        return None
    raise ClusterError(
        "model.device: cuda, but torch in this worker sees no CUDA device "
        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, Ray GPU ids {_ray_gpu_ids()}, "
        f"torch {torch.__version__} built for CUDA {torch.version.cuda}); "
        "install a CUDA build of torch on the GPU nodes or use model.device: auto"
    )


def make_cuda_deterministic() -> None:
    """Same config, same GPU model, same bits: no autotuned or TF32 kernels, and
    cuBLAS in its reproducible workspace mode (must be set before its first call).
    Ops with no deterministic CUDA kernel (max-pool backward) warn instead of failing."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def _ray_gpu_ids() -> list:
    try:
        import ray

        return list(ray.get_gpu_ids()) if ray.is_initialized() else []
    except Exception:  # outside a Ray worker there is nothing to report
        return []
