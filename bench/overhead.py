"""fedsim against the perfect-parallel floor, per round and at start-up.

Two workloads, both FedProx Synthetic data with 784 features, 10 classes, MLP
784-200-200-10, batch 10, lr 0.05:
- overhead: 1,000 clients, 100 per round, 50 training samples each, 1 epoch
  (little work per client: what the simulator itself costs shows);
- compute: 100 clients, 10 per round, 600 training samples each, 5 epochs
  (much work per client: how evenly the workers share it shows).

Per round, fedsim's round and then the same client work done by a plain loop in
this process (no Ray; copy the weights, train each sampled client, average; one
torch thread) are timed back to back, so both see the same machine state. T1 is
the plain loop's time; the floor is T1 / workers; the ratio round / floor is 1.0
at zero overhead. The same round's clients are then trained by ``workers`` plain
processes at once (spawned, sharing nothing, one torch thread each): their time
over the floor is what this machine gives parallel work before any simulator
runs, and fedsim over it is fedsim's own cost. The median over rounds and repeats
is reported.

Start-up: ``fedsim run`` in a fresh process on the overhead workload, from
launch to ready for round 1 and to round 1 written, with fedsim's own breakdown
(summary.json ``startup_seconds``); against a plain script in a fresh process
that imports torch, builds the same data and trains round 1's clients in a loop.

Module row (issue 20: a module model within 1.10x of the built-in's time per round):
each workload run as ``model.name: mlp`` and as ``model.name: module`` with the same
layers and initial bits (bench/module_mlp.py), back to back, alternating which goes
first; per round, wall seconds and the CPU seconds of this process and Ray's workers.
The ratio module / built-in is the median over repeats of the runs' median rounds.

    python bench/overhead.py [--workers 2] [--rounds 5] [--repeat 3] [--workloads overhead,compute]
                             [--module-repeat 4] [--module-workloads overhead,compute]
                             [--startup-repeat 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clients.models.spec import init_params  # noqa: E402
from clients.models.torch_engine import TorchModel  # noqa: E402
from clients.streams import Stream  # noqa: E402
from clients.training import ClientTask, client_rng, train_client  # noqa: E402
from clients.updates import add_weighted  # noqa: E402
from server.sampling import sample_clients  # noqa: E402
from simulator.config.build import build_dataset, build_model_spec, build_partition, local_training  # noqa: E402
from simulator.config.loading import apply_overrides, dump_yaml, from_dict  # noqa: E402
from simulator.config.schema import Config  # noqa: E402

# name: (clients, per round, training samples per client, epochs)
WORKLOADS = {"overhead": (1000, 100, 50, 1), "compute": (100, 10, 600, 5)}


def workload(name: str, workers: int, rounds: int) -> Config:
    clients, per_round, samples, epochs = WORKLOADS[name]
    overrides = {
        "name": f"bench-{name}",
        "rounds": rounds,
        "data.dataset": "synthetic",
        "data.partition": "natural",
        "data.num_clients": clients,
        # One sixth of each device's samples is held out for the server's test set.
        "data.synthetic.samples_per_device": samples * 6 // 5,
        "data.test_fraction": 1 / 6,
        "data.synthetic.num_features": 784,
        "model.name": "mlp",
        "model.hidden": [200, 200],
        "client.lr": 0.05,
        "client.epochs": epochs,
        "client.batch_size": 10,
        "server.clients_per_round": per_round,
        "server.eval_every": rounds,
        "runtime.workers": workers,
        "runtime.cpus_per_worker": 1.0,
        "runtime.checkpoint_every": rounds,
    }
    return from_dict(apply_overrides({}, overrides))


class PlainLoop:
    """The same client work with no Ray, no pool, no object store: 1 torch thread."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.dataset = build_dataset(cfg.data, cfg.seed)
        self.parts = build_partition(self.dataset, cfg.data, cfg.seed)
        spec = build_model_spec(cfg.model, self.dataset)
        self.model, self.training = TorchModel(spec), local_training(cfg)
        self.params = init_params(spec, cfg.seed)

    def round(self, round_: int) -> float:
        """Seconds to train round ``round_``'s clients and average their updates."""
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        start = time.perf_counter()
        total, weight = self.train(round_, self.round_clients(round_), self.params)
        self.params = (self.params + total.astype(np.float64) / weight).astype(np.float32)
        seconds = time.perf_counter() - start
        torch.set_num_threads(before)
        return seconds

    def round_clients(self, round_: int) -> np.ndarray:
        return sample_clients(self.cfg.seed, round_, self.cfg.data.num_clients, self.cfg.sampled_per_round())

    def train(self, round_: int, clients, params: np.ndarray) -> tuple[np.ndarray, int]:
        """(sum of n_i x update_i, sum of n_i) over ``clients`` from ``params``."""
        d = self.dataset
        total, weight = np.zeros_like(params), 0
        for cid in clients:
            rng = client_rng(self.cfg.seed, round_, int(cid), Stream.DATA_ORDER)
            task = ClientTask(
                model=self.model, start=params, x=d.x_train, y=d.y_train, shard=self.parts[cid],
                cfg=self.training, rng=rng, client_id=cid,
            )  # fmt: skip
            result = train_client(task)
            add_weighted(total, result.update, result.num_samples)
            weight += result.num_samples
        return total, weight


def _plain_process(cfg: Config, conn) -> None:
    """A plain-loop process: trains the clients it is sent, from the params it is sent."""
    torch.set_num_threads(1)
    loop = PlainLoop(cfg)
    conn.send("ready")
    while (job := conn.recv()) is not None:
        round_, clients, params = job
        conn.send(loop.train(round_, clients, params))


class ParallelPlain:
    """The plain loop in ``workers`` processes at once, each with the round's clients dealt
    alternately (equal work in these workloads): what this machine gives two processes
    that share nothing, the floor measured rather than assumed (T1 / workers)."""

    def __init__(self, cfg: Config, workers: int):
        self.loop = PlainLoop(cfg)
        context = multiprocessing.get_context("spawn")
        self.conns, self.processes = [], []
        for _ in range(workers):
            mine, theirs = context.Pipe()
            process = context.Process(target=_plain_process, args=(cfg, theirs), daemon=True)
            process.start()
            self.conns.append(mine)
            self.processes.append(process)
        for conn in self.conns:
            conn.recv()

    def round(self, round_: int) -> float:
        clients = self.loop.round_clients(round_)
        start = time.perf_counter()
        for k, conn in enumerate(self.conns):
            conn.send((round_, clients[k :: len(self.conns)], self.loop.params))
        parts = [conn.recv() for conn in self.conns]
        total = np.sum([p[0] for p in parts], axis=0)
        weight = sum(p[1] for p in parts)
        self.loop.params = (self.loop.params + total.astype(np.float64) / weight).astype(np.float32)
        return time.perf_counter() - start

    def close(self) -> None:
        for conn in self.conns:
            conn.send(None)
        for process in self.processes:
            process.join(timeout=30)


def interleaved(cfg: Config) -> list[tuple[float, float, float]]:
    """(fedsim round seconds, T1 seconds, parallel plain seconds) per round, each fedsim
    round followed by the plain loop's round and the parallel plain loops' round. A
    fedsim round runs from the end of the previous plain rounds to its own end-of-round
    callback, so metrics, checkpoints and the broadcast count."""
    plain, parallel = PlainLoop(cfg), ParallelPlain(cfg, cfg.runtime.workers)
    triples: list[tuple[float, float, float]] = []
    resumed = [0.0]

    def after_round(row: dict) -> None:
        ended = time.perf_counter()
        fedsim = row["seconds"] if row["round"] == 1 else ended - resumed[0]
        triples.append((fedsim, plain.round(row["round"]), parallel.round(row["round"])))
        resumed[0] = time.perf_counter()

    from simulator import Simulation  # here: the plain start-up script imports this module without Ray

    try:
        with tempfile.TemporaryDirectory() as tmp:
            Simulation(cfg, Path(tmp) / "run", quiet=True, on_round_end=after_round).run()
    finally:
        parallel.close()
    return triples


def per_round(name: str, workers: int, rounds: int, repeat: int) -> float:
    cfg = workload(name, workers, rounds)
    clients, per_round_, samples, epochs = WORKLOADS[name]
    print(
        f"\n{name} workload: {clients} clients, {per_round_}/round, {samples} samples each, E={epochs}, "
        f"B=10, MLP 784-200-200-10, {rounds} rounds x {repeat}, {workers} workers, "
        f"{cfg.runtime.reduction_groups} reduction groups"
    )
    print(
        "repeat  fedsim s/round  T1 s/round  floor s/round  ratio | parallel plain s/round  "
        "its ratio to floor  fedsim / it (medians over rounds)"
    )
    ratios, machine, versus = [], [], []
    for i in range(repeat):
        triples = interleaved(cfg)
        round_ratios = [sim / (t1 / workers) for sim, t1, _ in triples]
        ratios += round_ratios
        machine += [par / (t1 / workers) for _, t1, par in triples]
        versus += [sim / par for sim, _, par in triples]
        sim, t1, par = (statistics.median(t[k] for t in triples) for k in range(3))
        middle = statistics.median(round_ratios)
        print(
            f"{i + 1:>6}  {sim:>14.3f}  {t1:>10.3f}  {t1 / workers:>13.3f}  {middle:.3f} | "
            f"{par:>22.3f}  {statistics.median(machine[-len(triples) :]):>18.3f}  "
            f"{statistics.median(versus[-len(triples) :]):.3f}"
        )
    ratio = statistics.median(ratios)
    print(
        f"{name}: median ratio fedsim / floor over {len(ratios)} rounds: {ratio:.3f} (1.0: no overhead); "
        f"{workers} plain processes / floor: {statistics.median(machine):.3f} (what the machine gives); "
        f"fedsim / {workers} plain processes: {statistics.median(versus):.3f}"
    )
    return ratio


MODULE_MLP = "bench.module_mlp:mlp"
MODULE_TARGET = 1.10  # issue 20: a module model within 1.10x of the built-in's time per round


def as_module(cfg: Config) -> Config:
    """``cfg`` with its built-in mlp replaced by the same layers and initial bits as a
    user's module (bench/module_mlp.py); nothing else changes."""
    overrides = {
        "model.name": "module",
        "model.factory": MODULE_MLP,
        "model.kwargs": {
            "input_shape": [cfg.data.synthetic.num_features],
            "hidden": list(cfg.model.hidden),
            "num_classes": cfg.data.synthetic.num_classes,
            "seed": cfg.seed,
        },
    }
    return from_dict(apply_overrides(cfg.to_dict(), overrides))


def tree_cpu_seconds(root: int) -> dict[int, float]:
    """CPU seconds (user + system) so far of process ``root`` and its descendants (Ray's
    raylet and workers), by pid, from /proc (Linux; empty elsewhere)."""
    parents, cpu, tick = {}, {}, os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # the process ended
            continue
        pid = int(stat.parent.name)
        parents[pid], cpu[pid] = int(fields[1]), (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {root}, [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier and pid not in tree]
        tree.update(children)
        frontier = children
    return {pid: cpu[pid] for pid in tree if pid in cpu}


def round_seconds(cfg: Config) -> list[tuple[float, float]]:
    """(wall, CPU) seconds per round of a fedsim run of ``cfg``. Wall: round 1 as fedsim
    times it, then from one end-of-round callback to the next (metrics, checkpoints and the
    broadcast count). CPU: what this process and its descendants (Ray's workers) used in
    between, which other load on a shared machine changes far less than wall time."""
    seconds: list[tuple[float, float]] = []
    last = [0.0, tree_cpu_seconds(os.getpid())]

    def after_round(row: dict) -> None:
        ended, cpu = time.perf_counter(), tree_cpu_seconds(os.getpid())
        used = sum(total - last[1].get(pid, 0.0) for pid, total in cpu.items())
        seconds.append((row["seconds"] if row["round"] == 1 else ended - last[0], used))
        last[:] = [time.perf_counter(), cpu]

    from simulator import Simulation

    with tempfile.TemporaryDirectory() as tmp:
        Simulation(cfg, Path(tmp) / "run", quiet=True, on_round_end=after_round).run()
    return seconds


def module_vs_builtin(name: str, workers: int, rounds: int, repeat: int) -> float:
    """The module row: median over repeats of (module run's median s/round) / (built-in
    run's), the two runs of a repeat back to back, in alternating order; in wall seconds
    (the target's measure) and in CPU seconds (the steadier one on a shared machine).
    Round 1 (start-up work, the first broadcast) is left out when there are others."""
    builtin = workload(name, workers, rounds)
    module = as_module(builtin)
    print(
        f"\nmodule row, {name} workload: model.name module ({MODULE_MLP}, the built-in's layers and "
        f"initial bits) against model.name mlp, {rounds} rounds x {repeat}, {workers} workers"
    )
    print("repeat  built-in s/round (wall, CPU)  module s/round (wall, CPU)  ratios: wall  CPU")
    walls, cpus = [], []
    for i in range(repeat):
        order = [("builtin", builtin), ("module", module)]
        times = {label: round_seconds(cfg) for label, cfg in (order if i % 2 == 0 else order[::-1])}
        times = {label: rows[1:] or rows for label, rows in times.items()}
        base, mine = ([statistics.median(t[k] for t in times[label]) for k in (0, 1)] for label, _ in order)
        walls.append(mine[0] / base[0])
        cpus.append(mine[1] / base[1])
        print(
            f"{i + 1:>6}  {base[0]:>17.3f} {base[1]:>10.3f}  {mine[0]:>15.3f} {mine[1]:>10.3f}  "
            f"{walls[-1]:>12.3f}  {cpus[-1]:.3f}"
        )
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    verdict = {True: "meets", False: "misses"}
    print(
        f"{name}: module / built-in s/round, median over {repeat} repeats: wall {wall:.3f} "
        f"({verdict[wall <= MODULE_TARGET]} <= {MODULE_TARGET:.2f}x), CPU {cpu:.3f} "
        f"({verdict[cpu <= MODULE_TARGET]})"
    )
    return wall


PLAIN_STARTUP = """
import sys, time, json
sys.path.insert(0, {root!r})
sys.path.insert(0, {bench!r})
import torch
from overhead import PlainLoop, workload
loop = PlainLoop(workload("overhead", 1, 1))
ready = time.time()
loop.round(1)
print(json.dumps({{"ready": ready, "round_1": time.time(), "ray": "ray" in sys.modules}}))
"""


def fedsim_startup(workers: int) -> dict[str, float]:
    """Launch -> ready for round 1 and -> round 1 written, plus fedsim's own breakdown."""
    with tempfile.TemporaryDirectory() as tmp:
        config, out = Path(tmp) / "overhead.yaml", Path(tmp) / "run"
        config.write_text(dump_yaml(workload("overhead", workers, 2)))
        fedsim = [sys.executable, "-m", "simulator", "run", str(config), "--quiet", "--out", str(out)]
        launched = time.perf_counter()
        process = subprocess.Popen(fedsim, cwd=ROOT)
        metrics = out / "metrics.jsonl"
        while not (metrics.is_file() and metrics.stat().st_size) and process.poll() is None:
            time.sleep(0.005)
        written = time.perf_counter() - launched
        if process.wait() != 0:
            raise SystemExit(f"fedsim run failed with exit code {process.returncode}")
        startup = json.loads((out / "summary.json").read_text())["startup_seconds"]
    return {**startup, "ready": startup["before_run"] + startup["workers"], "round_1": written}


def plain_startup() -> dict[str, float]:
    script = PLAIN_STARTUP.format(root=str(ROOT), bench=str(ROOT / "bench"))
    launched = time.time()
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT)
    times = json.loads(out.stdout.strip().splitlines()[-1])
    return {"ready": times["ready"] - launched, "round_1": times["round_1"] - launched}


def startup(workers: int, repeat: int) -> None:
    print(f"\nstart-up, overhead workload, {workers} workers, fresh processes, {repeat} repeats (seconds)")
    print("repeat  fedsim: imports  data   Ray  workers (ready)  round 1 | plain: ready  round 1 | ratios")
    ready_ratios, round_ratios = [], []
    for i in range(repeat):
        f, p = fedsim_startup(workers), plain_startup()
        ready_ratios.append(f["ready"] / p["ready"])
        round_ratios.append(f["round_1"] / p["round_1"])
        print(
            f"{i + 1:>6}  {f['before_run']:>15.2f} {f['before_run'] + f['data']:>5.2f} "
            f"{f['before_run'] + f['ray']:>5.2f} {f['ready']:>16.2f} {f['round_1']:>8.2f} | "
            f"{p['ready']:>11.2f} {p['round_1']:>8.2f} | {ready_ratios[-1]:.2f} {round_ratios[-1]:.2f}"
        )
    print(
        "fedsim columns are seconds after launch when each part was ready (data and Ray come up side by "
        f"side); median ratios fedsim / plain: ready {statistics.median(ready_ratios):.2f}, "
        f"round 1 written {statistics.median(round_ratios):.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3, help="0 skips the fedsim / floor rows")
    parser.add_argument("--workloads", default="overhead,compute")
    parser.add_argument("--module-workloads", default="overhead,compute")
    parser.add_argument(
        "--module-repeat", type=int, default=4, help="module row's repeats (pairs of runs); 0 skips it"
    )
    parser.add_argument("--startup-repeat", type=int, default=3, help="0 skips the start-up measurement")
    args = parser.parse_args()
    rows = [(per_round, args.workloads, "--workloads", args.repeat)]
    rows.append((module_vs_builtin, args.module_workloads, "--module-workloads", args.module_repeat))
    for _, names, option, _ in rows:
        for name in names.split(","):
            if name not in WORKLOADS:
                parser.error(f"{option}: {name!r} is not one of {', '.join(WORKLOADS)}")
    for row, names, _, repeat in rows:
        for name in names.split(",") if repeat else []:
            row(name, args.workers, args.rounds, repeat)
    if args.startup_repeat:
        startup(args.workers, args.startup_repeat)


if __name__ == "__main__":
    main()
