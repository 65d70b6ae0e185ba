"""Config: typed loading, unknown keys, bad values, overrides, round trip."""

from __future__ import annotations

import re

import pytest

from clients.errors import ConfigError
from simulator.config.loading import (
    apply_overrides,
    dump_yaml,
    from_dict,
    load_config,
    load_run_config,
    parse_override,
)
from simulator.config.schema import Config
from tests.conftest import ROOT


def write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_fill_every_field(tmp_path):
    cfg = load_config(write(tmp_path, "rounds: 3\n"))
    assert cfg.rounds == 3
    assert cfg.data.dataset == "digits"
    assert cfg.runtime.reduction_groups == 8


def test_unknown_key_names_path_and_suggests(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "client:\n  lrr: 0.1\n"))
    assert "client.lrr" in str(err.value)
    assert "did you mean 'client.lr'" in str(err.value)


def test_unknown_top_level_section(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'sever'.*did you mean 'server'"):
        load_config(write(tmp_path, "sever:\n  lr: 1.0\n"))


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("client.lr=-0.1", "client.lr: -0.1 is not allowed; must be > 0"),
        ("server.clients_per_round=1.5", "server.clients_per_round: 1.5 is not allowed"),
        ("server.clients_per_round=500", "a count in [1, data.num_clients=50]"),
        ("data.dataset=mnits", "choose one of digits, synthetic"),
        ("client.epochs=two", "client.epochs: 'two' is not allowed; expected int"),
        ("data.test_fraction=1", "in (0, 1)"),
        ("model.device=gpu", "model.device: 'gpu' is not allowed; choose one of auto, cpu, cuda"),
        ("runtime.gpus_per_worker=-1", "runtime.gpus_per_worker: -1.0 is not allowed; must be 0, or in"),
        ("runtime.gpus_per_worker=1.5", "a fraction up to 1, or a whole number of GPUs"),
        ("model.device=cuda", "model.device: cuda needs runtime.gpus_per_worker > 0"),
        ("server.stop_after_loss_growth=1", "stop_after_loss_growth: 1.0 is not allowed; must be null"),
        ("server.stop_after_loss_growth=-5", "a factor > 1 of the initial model's test loss"),
        ("server.stop_after_loss_growth=.inf", "loss_growth: inf is not allowed; expected a finite"),
        ("server.stop_after_loss_growth_evals=0", "loss_growth_evals: 0 is not allowed; must be >= 1"),
    ],
)
def test_bad_values_name_key_value_and_rule(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "configs" / "default.yaml", [override])
    assert fragment in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["client.optimizer=adam", "client.momentum=0.9"], "the local adam optimiser has no momentum"),
        (
            ["server.optimizer=adagrad", "server.bias_correction=true"],
            "applies to server.optimizer adam and yogi",
        ),
        (
            ["server.optimizer=adagrad", "server.beta2=0.5"],
            "server.beta2: 0.5 is not allowed here; the second-moment decay applies to server.optimizer adam",
        ),
        (["server.aggregator=median", "server.weighting=uniform"], "'median' ignores weights"),
        (["client.local_steps=5"], "client.local_steps: 5 is not allowed here; it sets FedSGD's batches"),
        (["server.update=gradients", "client.prox_mu=0.1"], "there are no local steps for it to act on"),
        (["server.update=gradients", "client.max_grad_norm=1"], "client.max_grad_norm: 1.0 is not allowed"),
        (
            ["server.privacy.noise_multiplier=1", "server.clipping.kind=fixed"],
            "server.weighting: 'samples' is not allowed here; DP-FedAvg sums clipped updates unweighted",
        ),
    ],
)
def test_a_key_that_could_not_act_in_its_combination_is_refused(overrides, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_config(ROOT / "configs" / "default.yaml", overrides)


def test_a_run_directory_with_beta2_under_adagrad_reads_as_it_trained(tmp_path, caplog):
    """Before issue 22, server.beta2 under adagrad was accepted and never acted: such a run
    directory still loads (report, resume), with beta2 at its default."""
    text = dump_yaml(load_config(ROOT / "configs" / "default.yaml", ["server.optimizer=adagrad"]))
    assert text.count("beta2: 0.99") == 1
    (tmp_path / "config.yaml").write_text(text.replace("beta2: 0.99", "beta2: 0.5"))
    with caplog.at_level("WARNING", logger="fedsim"):
        cfg = load_run_config(tmp_path)
    assert cfg.server.optimizer == "adagrad" and cfg.server.beta2 == 0.99
    assert "server.beta2: 0.99 (the run's 0.5 never acted)" in caplog.text


def test_the_numpy_engine_is_refused_gpus():
    with pytest.raises(ConfigError, match="model.engine: numpy runs on CPUs only"):
        from_dict({"model": {"engine": "numpy"}, "runtime": {"gpus_per_worker": 0.25}})


def test_natural_partition_needs_natural_dataset():
    with pytest.raises(ConfigError, match="no natural clients"):
        from_dict({"data": {"dataset": "digits", "partition": "natural"}})


def test_override_coerces_yaml_types():
    keys, value = parse_override("model.hidden=[64, 32]")
    assert keys == ["model", "hidden"] and value == [64, 32]
    cfg = load_config(ROOT / "configs" / "default.yaml", ["client.lr=0.05", "server.clients_per_round=0.2"])
    assert cfg.client.lr == 0.05
    assert cfg.sampled_per_round() == 10  # 0.2 of 50 clients


def test_int_count_and_float_fraction_differ():
    assert from_dict({"server": {"clients_per_round": 1}}).sampled_per_round() == 1
    assert from_dict({"server": {"clients_per_round": 1.0}}).sampled_per_round() == 50


def test_override_into_value_is_refused():
    with pytest.raises(ConfigError, match="'rounds' is a value"):
        apply_overrides({"rounds": 3}, ["rounds.x=1"])


def test_override_without_equals_is_refused():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("client.lr")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(ROOT / "configs" / "default.yaml", ["model.hidden=[8]", "runtime.workers=2"])
    again = load_config(write(tmp_path, dump_yaml(cfg)))
    assert again == cfg
    assert isinstance(again, Config)


def test_malformed_yaml_gives_line(tmp_path):
    with pytest.raises(ConfigError, match=r"c.yaml: malformed YAML at line \d+, column \d+"):
        load_config(write(tmp_path, "rounds: 3\nclient: [oops\n"))


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(ROOT / "configs" / "nope.yaml")


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_are_valid(name):
    assert load_config(ROOT / "configs" / name).rounds >= 1
