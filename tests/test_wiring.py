"""Config to runtime objects: no field can be lost on the way.

``simulator.config.build.build_run`` is the one place that reads the config for what shapes
training; every runtime object it builds takes its parameters from the config section
by name (``from_section``). These tests read the config through a recorder while
``build_run`` builds a run, in every context of the key table (tests/key_effects.py),
and fail when a key has no row, a key said to shape training is not read there, or a
key said not to is read (apart from the few that only change what is reported).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pytest

from clients.training import LocalTrainingConfig
from server.system import SystemModel
from simulator.config.build import build_run, from_section, section_kwargs
from simulator.config.loading import apply_overrides, dump_yaml, from_dict, load_config
from simulator.config.schema import ClientConfig, Config, SystemConfig, yaml_key
from tests.conftest import ROOT
from tests.key_effects import (
    CONTEXTS,
    ROWS,
    Row,
    validate_keys,
    write_data_roots,
    write_leaf_roots,
    write_trace_files,
)

DEFAULT = ROOT / "configs" / "default.yaml"


class Recorder:
    """A read-only view of a config object that notes every leaf key read through it."""

    def __init__(self, target: Any, reads: set[str], prefix: str = ""):
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_reads", reads)
        object.__setattr__(self, "_prefix", prefix)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        fields = {f.name: f for f in dataclasses.fields(self._target)}
        if name.startswith("__") or name not in fields:
            return value
        key = self._prefix + yaml_key(fields[name])
        if dataclasses.is_dataclass(value):
            return Recorder(value, self._reads, key + ".")
        self._reads.add(key)
        return value


def reads_of_build_run(cfg: Config) -> set[str]:
    reads: set[str] = set()
    build_run(Recorder(cfg, reads))
    return reads


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("wiring")
    return {
        **write_leaf_roots(tmp), **write_data_roots(tmp), **write_trace_files(tmp), "tmp": str(tmp),
        "address": "auto",
    }  # fmt: skip


def test_every_key_fedsim_validate_prints_has_a_row():
    keys = validate_keys(dump_yaml(load_config(DEFAULT)))
    assert {"client.prox_mu", "server.weighting", "runtime.mlflow_experiment"} <= set(keys)
    rows = [row.key for row in ROWS]
    assert sorted(set(keys) - set(rows)) == [], "config keys without a row in tests/key_effects.py"
    assert sorted(set(rows) - set(keys)) == [], "rows for keys the config does not have"
    # A key may have a row in each context it acts differently in (trains here, not there).
    contexts = [(row.key, row.context) for row in ROWS]
    assert len(contexts) == len(set(contexts)), "a key with two rows in one context"


def config_of(row: Row, paths: dict[str, str]) -> Config:
    """The row's changed config, validated as a user's would be."""
    return from_dict(apply_overrides({}, row.overrides(paths)[1]))


@pytest.mark.parametrize("row", [r for r in ROWS if r.effect == "trains"], ids=lambda r: r.key)
def test_a_key_that_shapes_training_is_read_when_the_run_is_built(row, paths):
    reads = reads_of_build_run(config_of(row, paths))
    assert row.key in reads, f"{row.key} is never read by build_run in context {row.context!r}"


# Keys build_run reads although they do not change the model: what they change is
# reported (gradient flow, ε, Ditto's personal models), is arithmetic only (engine, the
# async buffer's summation groups), or is inert by design.
READ_WITHOUT_CHANGING_THE_MODEL = {
    "client.track_gradients", "server.privacy.delta", "model.engine", "data.synthetic.alpha",
    "runtime.reduction_groups", "client.personalization.ditto_lambda", "client.personalization.ditto_epochs",
    "model.buffers",
}  # fmt: skip


def test_keys_said_not_to_shape_training_are_never_read_when_a_run_is_built(paths):
    reads: set[str] = set()
    for context in CONTEXTS:
        reads |= reads_of_build_run(config_of(Row("name", "x", "none", context), paths))
    shaping = {r.key for r in ROWS if r.effect == "trains"}  # in some context
    claimed_inert = {r.key for r in ROWS if r.effect != "trains"} - shaping - READ_WITHOUT_CHANGING_THE_MODEL
    assert sorted(claimed_inert & reads) == []
    assert {"runtime.workers", "server.eval_every", "name"} <= claimed_inert


def test_from_section_takes_every_field_by_name():
    client = dataclasses.replace(ClientConfig(), prox_mu=0.25, max_grad_norm=2.0, local_steps=3)
    training = from_section(LocalTrainingConfig, client)
    for f in dataclasses.fields(LocalTrainingConfig):
        assert getattr(training, f.name) == getattr(client, f.name), f.name
    system = dataclasses.replace(SystemConfig(), deadline=2.5, dropout=0.1)
    # client.system.trace is the devices' (build_devices reads it), not the model's.
    taken = {k: v for k, v in dataclasses.asdict(system).items() if k != "trace"}
    assert dataclasses.asdict(from_section(SystemModel, system)) == taken


@dataclass(frozen=True)
class _NeedsMore:
    lr: float
    not_in_the_config: float = 1.0  # a default must not stand in for a config value


@dataclass(frozen=True)
class _Section:
    lr: float = 0.1
    extra: list = field(default_factory=list)


def test_a_parameter_missing_from_the_section_is_an_error_not_a_default():
    with pytest.raises(TypeError, match="not_in_the_config"):
        section_kwargs(_NeedsMore, _Section())
    assert section_kwargs(_NeedsMore, _Section(), not_in_the_config=2.0) == {
        "lr": 0.1,
        "not_in_the_config": 2.0,
    }
    with pytest.raises(TypeError, match="takes no parameter"):
        section_kwargs(_NeedsMore, _Section(), unknown=1)
