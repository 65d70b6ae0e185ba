"""Users' own models (model.name: module) through the user's path: the CLI and YAML configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from simulator import Simulation
from simulator.cli import main
from simulator.rundir.checkpoints import load_model
from tests.conftest import ROOT, interrupted_and_resumed, small_overrides
from tests.test_cli import assert_one_line_error, fedsim

DEFAULT = ROOT / "configs" / "default.yaml"
TINY = {
    "rounds": 2, "data.num_clients": 8, "server.clients_per_round": 4,
    "runtime.workers": 1, "runtime.cpus_per_worker": 1.0,
}  # fmt: skip


def module(factory: str, **kwargs) -> dict:
    return {"model.name": "module", "model.factory": f"tests.module_models:{factory}", "model.kwargs": kwargs}


def sets(overrides: dict) -> list[str]:
    return [arg for key, value in overrides.items() for arg in ("--set", f"{key}={json.dumps(value)}")]


def test_a_module_identical_to_the_builtin_mlp_trains_to_the_builtin_bits_through_the_cli(
    ray_cluster, tmp_path
):
    """``builtin_mlp`` is the built-in one-hidden-layer mlp written as a user's module, and
    its factory copies the built-in initial vector for the run's seed into it (a module
    model is otherwise initialised by torch, seeded from the run's seed): both runs start
    from the same bits, so equal final bits show that a module model trains on the flat
    vector by the built-in models' own code path."""
    runs = {}
    for name, model in {
        "builtin": {"model.name": "mlp", "model.hidden": [16]},
        "module": module("builtin_mlp", input_shape=[1, 8, 8], hidden=16, num_classes=10, seed=0),
    }.items():
        args = ["run", str(DEFAULT), "--out", str(tmp_path / name), "--quiet", *sets({**TINY, **model})]
        assert main(args) == 0  # the CLI in this process, on the session's Ray
        runs[name] = load_model(tmp_path / name / "model.safetensors")
    assert sorted(runs["module"]) == sorted(runs["builtin"])
    assert sorted(runs["module"]) == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
    for name, tensor in runs["builtin"].items():
        assert tensor.tobytes() == runs["module"][name].tobytes(), name


def test_a_module_model_gives_the_same_bits_on_1_and_2_workers_and_after_resume(ray_cluster, tmp_path):
    overrides = small_overrides(**module("small_net", dropout=0.2), **{"client.track_gradients": True})
    two = Simulation.from_yaml(DEFAULT, overrides, run_dir=tmp_path / "two").run()
    one = Simulation.from_yaml(DEFAULT, {**overrides, "runtime.workers": 1}, run_dir=tmp_path / "one").run()
    resumed = interrupted_and_resumed(DEFAULT, overrides, tmp_path / "resumed", stop_after=3)
    assert one.final_params.tobytes() == two.final_params.tobytes() == resumed.final_params.tobytes()
    assert [r["train_loss"] for r in one.rows] == [r["train_loss"] for r in two.rows]
    # Gradient flow per top-level module of the user's nn.Sequential (1: Linear, 4: Linear).
    assert sorted(two.rows[-1]["gradient_flow"]) == ["1", "4"]


def test_batch_norm_statistics_follow_model_buffers(ray_cluster, tmp_path):
    """Running statistics never change the training (batch norm trains on each batch's
    own statistics); they change what the model predicts in evaluation. ``average`` and
    ``local`` evaluate differently, and the server's averaged statistics (``average``) and
    each client's own (``local``) are kept across rounds and come back on resume."""
    base = small_overrides(**module("BatchNormNet"), **{"server.federated_eval.every": 2})
    runs = {
        policy: Simulation.from_yaml(
            DEFAULT, {**base, "model.buffers": policy}, run_dir=tmp_path / policy
        ).run()
        for policy in ("average", "local")
    }
    average, local = runs["average"], runs["local"]
    assert average.final_params.tobytes() == local.final_params.tobytes()
    assert average.rows[-1]["test_loss"] != local.rows[-1]["test_loss"]
    # A client's own statistics: its personal evaluation differs from the global model's.
    assert local.rows[-1]["personal_loss"] != local.rows[-1]["federated_loss"]
    for policy, run in runs.items():
        overrides = {**base, "model.buffers": policy}
        resumed = interrupted_and_resumed(DEFAULT, overrides, tmp_path / f"resumed_{policy}", stop_after=3)
        for before, after in zip(run.rows, resumed.rows, strict=True):
            assert {k: v for k, v in before.items() if k != "seconds"} == {
                k: v for k, v in after.items() if k != "seconds"
            }


PIPELINES = {
    "fedsgd": {"server.update": "gradients", "server.lr": 0.5},
    "fedprox_adam": {"client.prox_mu": 0.1, "server.optimizer": "adam", "server.lr": 0.01},
    "scaffold": {"client.algorithm": "scaffold"},
    "krum_topk": {"server.aggregator": "multi_krum", "server.compression.method": "topk"},
    "dp": {
        "server.clipping.kind": "fixed", "server.privacy.noise_multiplier": 0.5,
        "server.weighting": "uniform", "model.buffers": "reset",
    },
    "async": {"server.mode": "async", "client.system.speed_sigma": 1.0, "model.buffers": "local"},
    "ditto_finetune": {
        "client.personalization.method": "ditto", "server.federated_eval.every": 1,
        "server.federated_eval.finetune_steps": 2,
    },
    # Kept on the clients by parameter-name prefix: a submodule, and one parameter.
    "fedrep_prefixes": {
        "client.personalization.method": "fedrep",
        "client.personalization.personal_layers": ["bn", "head.bias"],
    },
    "fedbn": {
        "client.personalization.method": "fedbn", "model.buffers": "local", "server.federated_eval.every": 1,
    },
}  # fmt: skip


def test_every_pipeline_trains_a_module_model(ray_cluster, tmp_path):
    """The server and client steps work on a module model's flat vector as on any other:
    each run trains (the model moves) to a finite test loss."""
    start = None
    for name, extra in PIPELINES.items():
        overrides = small_overrides(**module("BatchNormNet"), **{"rounds": 2, **extra})
        history = Simulation.from_yaml(DEFAULT, overrides, run_dir=tmp_path / name).run()
        assert np.isfinite(history.rows[-1]["test_loss"]), name
        start = history.final_params if start is None else start
        assert name == "fedsgd" or history.final_params.tobytes() != start.tobytes(), name


@pytest.mark.parametrize(
    ("factory", "kwargs", "fragments"),
    [
        ("tests.module_models", {}, ["model.factory", "is not an import path"]),
        ("tests.no_such_models:net", {}, ["model.factory", "no module named 'tests.no_such_models'"]),
        ("tests.module_models:no_such_net", {}, ["has no attribute 'no_such_net'"]),
        ("tests.module_models:NOT_CALLABLE", {}, ["not a callable"]),
        ("tests.module_models:not_a_module", {}, ["returned a int, not a torch.nn.Module"]),
        ("tests.module_models:raises", {"width": 3}, ["raised RuntimeError: no GPU"]),
        ("tests.module_models:small_net", {"colour": 3}, ["raised TypeError", "colour"]),
        ("tests.module_models:wrong_output", {}, ["maps inputs (2, 1, 8, 8) to (2, 7)", "(2, 10)"]),
    ],
    ids=["no-colon", "no-module", "no-attribute", "not-callable", "not-a-module", "raises", "bad-kwargs",
         "wrong-output"],
)  # fmt: skip
def test_a_bad_factory_is_one_line_and_exit_2(factory, kwargs, fragments):
    overrides = {"model.name": "module", "model.factory": factory, "model.kwargs": kwargs}
    assert_one_line_error(fedsim("validate", DEFAULT, "--data", *sets(overrides)), *fragments)


@pytest.mark.parametrize(
    ("layers", "fragment"),
    [(["nohead"], "'nohead' names no parameter of the model; its top-level modules with parameters: 1, 4"),
     (["1", "4"], "every parameter would stay on the clients")],
)  # fmt: skip
def test_personal_layers_of_a_module_model_are_checked_when_the_run_is_built(layers, fragment):
    overrides = {
        **module("small_net"), "client.personalization.method": "fedper",
        "client.personalization.personal_layers": layers,
    }  # fmt: skip
    assert fedsim("validate", DEFAULT, *sets(overrides)).returncode == 0  # the layers are not known yet
    assert_one_line_error(fedsim("validate", DEFAULT, "--data", *sets(overrides)), fragment)


def test_a_module_model_on_the_numpy_engine_is_refused_in_one_line():
    overrides = {**module("small_net"), "model.engine": "numpy"}
    assert_one_line_error(fedsim("validate", DEFAULT, *sets(overrides)), "model.engine", "module model")


def test_user_code_runs_only_once_the_run_starts_and_workers_find_it(tmp_path):
    """The trust boundary: plain ``validate`` reads the factory's name only; ``--data``
    builds the run, which imports and calls it, from the folder fedsim runs in (not
    installed); so does ``run``, whose workers find it there too; ``prune`` rebuilds it,
    and ``report`` draws its run (gradient flow per top-level module included)."""
    marker = tmp_path / "imported"
    (tmp_path / "my_models.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\n"
        "from tests.module_models import tied\n"
    )
    overrides = {"model.name": "module", "model.factory": "my_models:tied"}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def fedsim_here(command, *args):  # fedsim in tmp_path, where my_models.py is
        args = [sys.executable, "-m", "simulator", command, *map(str, args)]
        return subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=240, env=env)

    plain = fedsim_here("validate", DEFAULT, *sets(overrides))
    assert plain.returncode == 0, plain.stderr
    assert "factory: my_models:tied" in plain.stdout and not marker.exists()
    built = fedsim_here("validate", DEFAULT, "--data", *sets(overrides))
    assert built.returncode == 0, built.stderr
    assert marker.exists()
    weights = 64 * 64 + 64 + 64 + 64 * 10 + 10  # the tied 64x64 weight counted once
    assert f"model: {weights:,} parameters" in built.stderr
    run_dir = tmp_path / "run"
    tracked = {**TINY, **overrides, "client.track_gradients": True}
    run = fedsim_here("run", DEFAULT, "--out", run_dir, "--quiet", *sets(tracked))
    assert run.returncode == 0, run.stderr
    assert sorted(load_model(run_dir / "model.safetensors")) == [
        "1.bias",
        "1.weight",
        "3.bias",
        "5.bias",
        "5.weight",
    ]
    pruned = fedsim_here("prune", run_dir, "--sparsity", "0.5", "--finetune-rounds", "1")
    assert pruned.returncode == 0, pruned.stderr
    report = fedsim_here("report", run_dir, "--out", tmp_path / "report")
    assert report.returncode == 0, report.stderr
    assert "data:image/png;base64," in (tmp_path / "report" / "report.html").read_text()


def test_module_names_serve_personalization_and_layer_pruning(ray_cluster, tmp_path):
    """FedPer keeps the user's top-level module "4" (the head) on the clients; layer-scope
    pruning ranks each of the module's weight tensors alone."""
    overrides = small_overrides(
        **module("small_net"),
        **{
            "rounds": 2, "client.personalization.method": "fedper",
            "client.personalization.personal_layers": ["4"], "server.pruning.method": "magnitude",
            "server.pruning.scope": "layer", "server.pruning.start_round": 1, "server.pruning.end_round": 2,
            "server.pruning.every": 1, "server.pruning.sparsity": 0.5,
        },
    )  # fmt: skip
    history = Simulation.from_yaml(DEFAULT, overrides, run_dir=tmp_path / "run").run()
    assert history.rows[-1]["layer_density"]["1.weight"] == pytest.approx(0.5, abs=0.01)
    assert np.isfinite(history.rows[-1]["test_loss"])
