"""Work and size bounds: the client trips and local steps a config asks for, estimated
from the config alone (no data is read), refused past what any run finishes."""

from __future__ import annotations

import math

from clients.data.datasets import DIGITS_SHAPE
from clients.errors import ConfigError
from simulator.config.rules.data import SYNTHETIC_MEAN_SAMPLES
from simulator.config.schema import (
    Config,
    DataConfig,
    FederatedEvalConfig,
    async_shape,
    sampled_per_round,
    selected_per_round,
)
from simulator.config.yaml_input import show

# The work a config asks for, estimated before anything runs; past these no run ends in
# any sensible time (a local step of the smallest model takes ~0.1 ms on a core), and a
# run that would sit silent for days is one error instead. Research runs stay far below
# (the configs in configs/ ask for at most 9,000 trips, 8,200 steps a round, 1.6e6 a run).
MAX_CLIENT_TRIPS = 10**8  # client trips in a run: a client trains once and reports
MAX_ROUND_STEPS = 10**6  # local steps in one round or async server step, fine-tuning included
MAX_RUN_STEPS = 10**9  # local steps in the whole run
# What validate assumes of the datasets without reading them: training rows (digits and
# synthetic before data.test_fraction; digits' from its loader, the others' published
# sizes, which their loaders learn from the files), and LEAF's full FEMNIST and Shakespeare
# (Caldas et al. 2018, Table 1: samples, and their writers / speaking roles).
DATASET_ROWS = {
    "digits": DIGITS_SHAPE[0], "mnist": 60_000, "fashion_mnist": 60_000, "cifar10": 50_000,
    "femnist": 805_263, "shakespeare": 4_226_158,
}  # fmt: skip
LEAF_CLIENTS = {"femnist": 3_550, "shakespeare": 1_129}


def client_rows(d: DataConfig, fe: FederatedEvalConfig) -> float:
    """A client's training rows on average (the mean over clients sets a run's expected
    work), from the config alone: no data is read."""
    natural_leaf = d.dataset in LEAF_CLIENTS and d.partition == "natural"
    if d.dataset not in DATASET_ROWS and d.dataset != "synthetic":
        return 0.0  # users' data: sizes unknown until read; a client counts one batch at least
    if d.dataset == "synthetic":
        rows = (d.synthetic.samples_per_device or SYNTHETIC_MEAN_SAMPLES) * (1 - d.test_fraction)
    elif natural_leaf:
        rows = DATASET_ROWS[d.dataset] / LEAF_CLIENTS[d.dataset]
    else:
        held_out = d.test_fraction if d.dataset == "digits" else 0.0
        rows = DATASET_ROWS[d.dataset] * (1 - held_out) / d.num_clients
    if fe.every and not (natural_leaf or d.generate_on_workers):
        rows *= 1 - fe.holdout
    return rows


def check_work(cfg: Config) -> None:
    """Refuse more than MAX_CLIENT_TRIPS client trips, MAX_ROUND_STEPS local steps in a
    round or MAX_RUN_STEPS in the run, in one line naming the key that weighs most and
    how the work adds up (client_rows estimates a client's share)."""
    d, c, s, p, fe = cfg.data, cfg.client, cfg.server, cfg.client.personalization, cfg.server.federated_eval
    per_round, clients, rounds = _round_trips(cfg)
    trips = cfg.rounds * per_round
    if trips > MAX_CLIENT_TRIPS:
        lead = clients if per_round >= cfg.rounds else f"rounds={cfg.rounds}"
        raise ConfigError(
            f"{lead} asks for {_amount(trips)} client trips ({per_round:,} a round over {rounds}); "
            f"at most {_amount(MAX_CLIENT_TRIPS)} are allowed"
        )
    batches = max(1, math.ceil(client_rows(d, fe) / c.batch_size))
    if s.update == "gradients":  # FedSGD: one gradient over the shard or local_steps batches
        passes: dict[str, int] = {}
        trip = batches if c.local_steps is None else min(batches, c.local_steps)
        training = f"{_n(per_round, 'client')} x ~{_n(trip, 'batch')}"
    else:
        passes = {"client.epochs": c.epochs}
        if p.method == "fedrep":
            passes["client.personalization.head_epochs"] = p.head_epochs
        if p.method == "ditto":
            passes["client.personalization.ditto_epochs"] = p.ditto_epochs or c.epochs
        epochs = sum(passes.values())
        trip = epochs * batches
        training = f"{_n(per_round, 'client')} x {_n(epochs, 'epoch')} x ~{_n(batches, 'batch')}"
    evaluated = max(1, round(fe.fraction * d.num_clients)) if fe.every else 0
    evaluations = -(-cfg.rounds // fe.every) if fe.every else 0
    tune = evaluated * fe.finetune_steps
    factors = {clients: per_round, f"client.batch_size={c.batch_size}": batches}
    factors.update({f"{key}={value}": value for key, value in passes.items() if value > 1})
    tuning = ""
    if tune:
        tuning = f" + {_n(evaluated, 'evaluated client')} x {_n(fe.finetune_steps, 'fine-tuning step')}"
    round_steps = per_round * trip + tune
    lead = f"server.federated_eval.finetune_steps={fe.finetune_steps}"
    if tune <= per_round * trip:
        lead = max(factors, key=factors.__getitem__)
    if round_steps > MAX_ROUND_STEPS:
        raise ConfigError(
            f"{lead} asks for {_amount(round_steps)} local steps a round ({training}{tuning}); "
            f"at most {_amount(MAX_ROUND_STEPS)} are allowed"
        )
    run_steps = cfg.rounds * per_round * trip + evaluations * tune
    if run_steps > MAX_RUN_STEPS:
        tuning = f" + {_n(evaluations, 'evaluation')} x {tuning[3:]}" if tune else ""
        raise ConfigError(
            f"rounds={cfg.rounds} asks for {_amount(run_steps)} local steps "
            f"({rounds} x {training}{tuning}); at most {_amount(MAX_RUN_STEPS)} are allowed"
        )


def _round_trips(cfg: Config) -> tuple[int, str, str]:
    """Client trips in a round (an async server step: its buffer), the key that sets them
    as the error names it, and the run's rounds (or steps) in words."""
    d, c, s = cfg.data, cfg.client, cfg.server
    if s.mode == "async":
        per_round = async_shape(s, d.num_clients)[1]
        size = s.async_.buffer_size if s.async_.buffer_size is not None else f"null (= {per_round})"
        return per_round, f"server.async.buffer_size={size}", _n(cfg.rounds, "step")
    k, per_round = sampled_per_round(s, d.num_clients), selected_per_round(cfg)
    clients = f"server.clients_per_round={show(s.clients_per_round)}"
    if per_round > k:
        clients = f"client.system.over_selection={c.system.over_selection:g}"
    return per_round, clients, _n(cfg.rounds, "round")


def _n(count: int, noun: str) -> str:
    """``count`` ``noun``s: 1 client, 2 clients, 3 batches."""
    return f"{count:,} {noun}" + ("" if count == 1 else "es" if noun == "batch" else "s")


def _amount(count: float) -> str:
    """A count in an error line: 12,345, or 1.2e9 from a hundred thousand on."""
    if count < 100_000:
        return f"{int(count):,}"
    mantissa, exponent = f"{count:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"
