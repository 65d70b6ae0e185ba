"""The data section's rules: partition and split settings, the Synthetic(α, β) generator
(and the size it may reach), users' own data and the keys each kind of dataset reads."""

from __future__ import annotations

from clients.data.formats import CODE_DATASET, TABLE_FORMATS
from clients.errors import ConfigError
from clients.user_code import check_target
from simulator.config.rules import require
from simulator.config.schema import NATURAL_DATASETS, TEXT_DATASETS, Config, DataConfig
from simulator.config.yaml_input import show

SYNTHETIC_MEAN_SAMPLES = 453  # E[int(lognormal(4, 2))] + 50 = e^6 + 50, the paper's sizes
MAX_SYNTHETIC_BYTES = 1 << 32  # generated on the driver (float32 features)


def check_data(cfg: Config) -> None:
    d = cfg.data
    require(d.num_clients >= 1, "data.num_clients", d.num_clients, ">= 1")
    require(0 < d.alpha <= 1e6, "data.alpha", d.alpha, "in (0, 1e6] (larger is IID: data.partition: iid)")
    require(d.shards_per_client >= 1, "data.shards_per_client", d.shards_per_client, ">= 1")
    require(d.min_samples_per_client >= 1, "data.min_samples_per_client", d.min_samples_per_client, ">= 1")
    require(0 < d.test_fraction < 1, "data.test_fraction", d.test_fraction, "in (0, 1)")
    _check_synthetic(d)
    _check_synthetic_size(d)
    _check_user_data(d)
    if d.partition == "natural" and not _may_have_clients(d):
        raise ConfigError(
            f"data.partition: 'natural' is not allowed for data.dataset {d.dataset!r}; "
            f"it has no natural clients (datasets with them: {', '.join(NATURAL_DATASETS)}; "
            "arrays and npz when they give client ids; csv, parquet and hf_disk with data.client_column)"
        )


def _check_synthetic(d: DataConfig) -> None:
    # Standard deviations of the generator's means; past 1e3 float32 features overflow.
    require(0 <= d.synthetic.alpha <= 1e3, "data.synthetic.alpha", d.synthetic.alpha, "in [0, 1000]")
    require(0 <= d.synthetic.beta <= 1e3, "data.synthetic.beta", d.synthetic.beta, "in [0, 1000]")
    require(d.synthetic.num_features >= 1, "data.synthetic.num_features", d.synthetic.num_features, ">= 1")
    require(d.synthetic.num_classes >= 2, "data.synthetic.num_classes", d.synthetic.num_classes, ">= 2")
    spd = d.synthetic.samples_per_device
    require(spd is None or spd >= 2, "data.synthetic.samples_per_device", spd, "null or >= 2")
    if d.generate_on_workers and (d.dataset, d.partition) != ("synthetic", "natural"):
        raise ConfigError(
            "data.generate_on_workers: true needs data.dataset synthetic and data.partition natural"
        )
    if d.generate_on_workers and d.synthetic.samples_per_device is None:
        raise ConfigError(
            "data.generate_on_workers: true needs data.synthetic.samples_per_device (a fixed count)"
        )


def _may_have_clients(d: DataConfig) -> bool:
    """Whether the dataset can name each row's client (known for files and code only when
    they are read: a missing column or array is refused then)."""
    if d.dataset in TABLE_FORMATS:
        return d.client_column is not None
    return d.dataset in NATURAL_DATASETS or d.dataset in ("arrays", "npz")


def _check_user_data(d: DataConfig) -> None:
    """Users' own data: each key only where it is read; data.loader's syntax, never its import."""
    if d.dataset == CODE_DATASET:
        if d.loader is None:
            raise ConfigError("data.dataset: 'arrays' needs data.loader ('package.module:callable')")
        check_target(d.loader, "data.loader")
    elif d.loader is not None:
        raise ConfigError(f"data.loader: {show(d.loader)} is read with data.dataset: arrays only")
    if d.dataset not in TABLE_FORMATS:
        given = {"features": d.features != [], "label": d.label != "label", "client_column": d.client_column}
        for key, set_ in given.items():
            if set_:
                raise ConfigError(
                    f"data.{key}: {show(getattr(d, key))} names a column; data.dataset {show(d.dataset)} "
                    f"has none (columns are read for {', '.join(TABLE_FORMATS)})"
                )
    require(d.crop_padding >= 0, "data.crop_padding", d.crop_padding, ">= 0")
    if d.augment in ("crop", "crop_flip"):
        require(d.crop_padding >= 1, "data.crop_padding", d.crop_padding, ">= 1 with a crop")
    if d.normalize != "none" and d.generate_on_workers:
        raise ConfigError(
            f"data.normalize: {show(d.normalize)} needs the training data on the driver; "
            "data.generate_on_workers generates it on the workers"
        )
    if d.normalize != "none" and d.dataset in TEXT_DATASETS:
        raise ConfigError(f"data.normalize: {show(d.normalize)}: {d.dataset} holds token ids, not numbers")
    if d.augment != "none" and d.dataset in (*TEXT_DATASETS, "synthetic", "csv", "parquet"):
        raise ConfigError(
            f"data.augment: {show(d.augment)} crops and flips images; "
            f"data.dataset {show(d.dataset)} holds none"
        )


def _check_synthetic_size(d: DataConfig) -> None:
    """Synthetic(α, β) is generated whole on the driver (or one device at a time on the
    workers): refuse sizes no machine holds before generating anything."""
    if d.dataset != "synthetic":
        return
    s = d.synthetic
    samples = s.samples_per_device or SYNTHETIC_MEAN_SAMPLES
    per_device = samples * s.num_features * 4
    devices = 1 if d.generate_on_workers else d.num_clients
    if devices * per_device > MAX_SYNTHETIC_BYTES:
        raise ConfigError(
            f"data.synthetic: {devices:,} devices x {samples:,} samples x "
            f"{s.num_features:,} features is {devices * per_device / 2**30:.0f} GiB; at most "
            f"{MAX_SYNTHETIC_BYTES / 2**30:.0f} GiB (use data.generate_on_workers for large populations)"
        )
