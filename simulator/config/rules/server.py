"""The server section's rules: client sampling, learning rate and stopping, the evaluation
batch, the server optimiser, robust aggregation (and the weights it ignores) and simulated
attacks. Clipping and DP, compression, pruning, async and federated evaluation have their
own modules."""

from __future__ import annotations

from server.aggregation import UNWEIGHTED_AGGREGATORS
from simulator.config.rules import refuse, require
from simulator.config.schema import Config, ServerConfig, sampled_per_round


def check_round(cfg: Config) -> None:
    """Clients per round, the server's learning rate, evaluation cadence and when a failing
    run stops."""
    s, num_clients = cfg.server, cfg.data.num_clients
    per_round = s.clients_per_round
    if isinstance(per_round, float):
        require(0 < per_round <= 1, "server.clients_per_round", per_round, "a fraction in (0, 1]")
    else:
        require(
            1 <= per_round <= num_clients,
            "server.clients_per_round",
            per_round,
            f"a count in [1, data.num_clients={num_clients}]",
        )
    require(s.lr > 0, "server.lr", s.lr, "> 0")
    require(s.eval_every >= 1, "server.eval_every", s.eval_every, ">= 1")
    require(
        s.stop_after_nonfinite_rounds >= 0,
        "server.stop_after_nonfinite_rounds",
        s.stop_after_nonfinite_rounds,
        ">= 0 (0 = never stop)",
    )
    require(
        0 <= s.stop_after_rejected_share <= 1,
        "server.stop_after_rejected_share",
        s.stop_after_rejected_share,
        "in [0, 1] (1 = only when every update is rejected)",
    )
    growth = s.stop_after_loss_growth
    require(
        growth is None or growth > 1, "server.stop_after_loss_growth", growth,
        "null (never stop) or a factor > 1 of the initial model's test loss",
    )  # fmt: skip
    require(
        s.stop_after_loss_growth_evals >= 1, "server.stop_after_loss_growth_evals",
        s.stop_after_loss_growth_evals, ">= 1 (server.stop_after_loss_growth: null turns the rule off)",
    )  # fmt: skip


def check_eval_batch_size(cfg: Config) -> None:
    s = cfg.server
    require(s.eval_batch_size >= 1, "server.eval_batch_size", s.eval_batch_size, ">= 1")


def check_optimizer_and_aggregator(cfg: Config) -> None:
    s = cfg.server
    for key in ("momentum", "beta1", "beta2"):
        require(0 <= getattr(s, key) < 1, f"server.{key}", getattr(s, key), "in [0, 1)")
    require(s.tau > 0, "server.tau", s.tau, "> 0")
    require(0 <= s.trim_beta < 0.5, "server.trim_beta", s.trim_beta, "in [0, 0.5)")
    require(s.krum_f >= 0, "server.krum_f", s.krum_f, ">= 0")
    require(s.krum_m >= 1, "server.krum_m", s.krum_m, ">= 1")


def check_attack(cfg: Config) -> None:
    a = cfg.server.attack
    require(0 <= a.fraction < 1, "server.attack.fraction", a.fraction, "in [0, 1)")
    require(a.scale > 0, "server.attack.scale", a.scale, "> 0")
    require(a.noise_std > 0, "server.attack.noise_std", a.noise_std, "> 0")


def check_combinations(cfg: Config) -> None:
    """Settings the chosen optimiser or aggregator does not read, and Krum's round size."""
    s = cfg.server
    if s.optimizer == "adagrad" and s.bias_correction:
        refuse("server.bias_correction", True, "bias correction applies to server.optimizer adam and yogi")
    if s.optimizer == "adagrad" and s.beta2 != ServerConfig.beta2:
        # FedAdagrad's v_t = v_{t-1} + Delta_t^2 (Reddi et al. 2021) has no decay to set.
        refuse("server.beta2", s.beta2, "the second-moment decay applies to server.optimizer adam and yogi")
    if s.weighting == "uniform" and s.aggregator in UNWEIGHTED_AGGREGATORS:
        refuse(
            "server.weighting",
            "uniform",
            f"server.aggregator {s.aggregator!r} ignores weights; weighting applies to mean and multi_krum",
        )
    if s.aggregator in ("krum", "multi_krum"):
        k = sampled_per_round(s, cfg.data.num_clients)
        if k <= 2 * s.krum_f + 2:
            refuse("server.krum_f", s.krum_f, f"Krum needs clients per round k > 2f + 2, and k = {k}")
        if s.aggregator == "multi_krum" and s.krum_m > k:
            refuse("server.krum_m", s.krum_m, f"multi-Krum averages at most the k = {k} clients of a round")
