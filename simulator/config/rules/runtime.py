"""The runtime section's rules: Ray workers and the CPUs and GPUs each reserves, the
device the model trains on, reduction groups, checkpoints and user code's form."""

from __future__ import annotations

from clients.errors import ConfigError
from clients.user_code import check_py_module_entry
from simulator.config.rules import require
from simulator.config.schema import Config, ModelConfig, RuntimeConfig

RAY_RESOURCE_STEP = 1e-4  # Ray rounds CPU and GPU requests to 4 decimals


def check_runtime(cfg: Config) -> None:
    r = cfg.runtime
    require(r.workers is None or r.workers >= 1, "runtime.workers", r.workers, "null or >= 1")
    require(
        RAY_RESOURCE_STEP <= r.cpus_per_worker <= 100_000,
        "runtime.cpus_per_worker",
        r.cpus_per_worker,
        f"in [{RAY_RESOURCE_STEP}, 100000] (Ray counts CPUs to 4 decimals)",
    )
    _check_devices(cfg.model, r)
    require(r.reduction_groups >= 1, "runtime.reduction_groups", r.reduction_groups, ">= 1")
    require(r.checkpoint_every >= 1, "runtime.checkpoint_every", r.checkpoint_every, ">= 1")
    for entry in r.py_modules or []:  # their form only: found (and imported) when the run starts
        check_py_module_entry(entry)


def _check_devices(m: ModelConfig, r: RuntimeConfig) -> None:
    require(
        r.gpus_per_worker == 0 or RAY_RESOURCE_STEP <= r.gpus_per_worker <= 10_000,
        "runtime.gpus_per_worker",
        r.gpus_per_worker,
        f"0, or in [{RAY_RESOURCE_STEP}, 10000] (Ray counts GPUs to 4 decimals)",
    )
    require(
        r.gpus_per_worker <= 1 or float(r.gpus_per_worker).is_integer(),
        "runtime.gpus_per_worker",
        r.gpus_per_worker,
        "a fraction up to 1, or a whole number of GPUs (Ray's rule)",
    )
    if m.device == "cuda" and r.gpus_per_worker == 0:
        raise ConfigError(
            "model.device: cuda needs runtime.gpus_per_worker > 0, so that Ray gives each worker a GPU"
        )
    if m.device == "cpu" and r.gpus_per_worker > 0:
        raise ConfigError(
            "model.device: cpu with runtime.gpus_per_worker > 0 reserves GPUs that no worker uses; "
            "set gpus_per_worker: 0 or model.device: auto/cuda"
        )
    if m.engine == "numpy" and (m.device == "cuda" or r.gpus_per_worker > 0):
        raise ConfigError(
            "model.engine: numpy runs on CPUs only; use model.engine: torch for "
            "model.device: cuda / runtime.gpus_per_worker > 0"
        )
