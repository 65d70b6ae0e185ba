"""The optional panels: charts a report draws only when some run logged their metrics
(gradient flow, pruning, async staleness, participation, fairness, personalization,
federated evaluation, update norms, clipping, privacy).
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from simulator.report.charts import (
    DPI,
    FIGSIZE,
    Axis,
    Line,
    finish_axes,
    integer_ticks,
    mean_and_max,
    new_axes,
    overlaid_histograms,
    rounds_chart,
    run_colour,
    runs_with,
)
from simulator.report.device_panels import (
    participation_by_availability,
    participation_by_speed,
    round_length,
    selection_fairness,
)
from simulator.report.fairness import worst_share_mean
from simulator.report.prune_charts import prune_accuracy_panel, prune_layers_panel
from simulator.report.runs import RunRecord, has_accuracy, logs, metric
from simulator.report.settings import config_value


def _flow_rows(run: RunRecord) -> list[tuple[int, dict[str, dict[str, float]]]]:
    return [(r["round"], r["gradient_flow"]) for r in run.rows if r.get("gradient_flow")]


def _layer_order(runs: list[RunRecord]) -> list[str]:
    layers: list[str] = []
    for run in runs:
        for _, flow in _flow_rows(run):
            layers += [name for name in flow if name not in layers]
    return layers


def _gradient_flows(
    runs: list[RunRecord], labels: list[str]
) -> tuple[list[tuple[RunRecord, str]], list[str]]:
    """(run, label) of the runs that tracked gradients, and every layer in input-to-output order."""
    return runs_with(runs, labels, lambda run: bool(_flow_rows(run))), _layer_order(runs)


def _gradient_flow_over_rounds(runs: list[RunRecord], labels: list[str]) -> Figure | None:
    """One subplot per run that tracked gradients: each layer's mean |dL/dθ| per round."""
    tracked, layers = _gradient_flows(runs, labels)
    if not tracked:
        return None
    fig = Figure(figsize=(FIGSIZE[0], 2.6 * len(tracked) + 0.6), dpi=DPI, layout="tight")
    axes = fig.subplots(len(tracked), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (run, label) in zip(axes, tracked, strict=True):
        rows = _flow_rows(run)
        for i, layer in enumerate(layers):
            points = [(rnd, flow[layer]["grad_norm"]) for rnd, flow in rows if layer in flow]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, color=run_colour(i, len(layers)), label=layer, linewidth=1.6)
        ax.set_yscale("log")
        ax.set_title(f"{label}: parameter-gradient norm per layer", fontsize=11)
        ax.set_ylabel("mean |dL/dθ| (log)", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, ncol=min(len(layers), 6), loc="best")
    axes[-1].set_xlabel("Round", fontsize=10)
    return fig


def _gradient_flow_last_round(runs: list[RunRecord], labels: list[str]) -> Figure | None:
    """Grouped bars: each layer's |dL/dθ| in each run's last tracked round (log scale)."""
    tracked, layers = _gradient_flows(runs, labels)
    if not tracked:
        return None
    fig, ax = new_axes()
    width = 0.8 / len(tracked)
    for j, (run, label) in enumerate(tracked):
        last = _flow_rows(run)[-1][1]
        heights = [last[layer]["grad_norm"] if layer in last else float("nan") for layer in layers]
        xs = [i + (j - (len(tracked) - 1) / 2) * width for i in range(len(layers))]
        ax.bar(xs, heights, width=width, color=run_colour(j, len(tracked)), label=label)
    ax.set_xticks(range(len(layers)), layers, rotation=45 if len(layers) > 6 else 0, fontsize=9)
    ax.set_yscale("log")
    ax.set_xlabel("Layer (input → output)", fontsize=10)
    ax.set_ylabel("mean |dL/dθ| (log)", fontsize=10)
    ax.set_title("Gradient flow in the last round, per layer", fontsize=12)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=9)
    return fig


def _density_over_rounds(runs: list[RunRecord], labels: list[str]) -> Figure | None:
    """Density of the pruned model per round, for runs that pruned while training."""
    tracked = runs_with(runs, labels, lambda run: logs(run, "density"))
    if not tracked:
        return None
    fig, ax = new_axes()
    for i, (run, label) in enumerate(tracked):
        points = [(row["round"], 100 * row["density"]) for row in run.rows if "density" in row]
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, color=run_colour(i, len(tracked)), label=label, linewidth=1.8)
    finish_axes(ax, "Model density over rounds (pruning in the pipeline)", "Round", "Weights kept (%)")
    return fig


def _accuracy_vs_simulated_time(runs: list[RunRecord], labels: list[str]) -> Figure | None:
    """Test accuracy against simulated time: sync rounds and async steps side by side."""
    tracked = runs_with(runs, labels, lambda run: logs(run, "simulated_elapsed") and has_accuracy(run))
    if not tracked:
        return None
    fig, ax = new_axes()
    for i, (run, label) in enumerate(tracked):
        points = [
            (row["simulated_elapsed"], 100 * row["test_accuracy"])
            for row in run.rows
            if row.get("test_accuracy") is not None and "simulated_elapsed" in row
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, color=run_colour(i, len(tracked)), label=label, linewidth=1.8)
    xlabel = "Simulated time (s): a sync round lasts until its k-th counted client's trip ends"
    finish_axes(ax, "Test accuracy against simulated time", xlabel, "Test accuracy (%)")
    return fig


def _staleness_counts(run: RunRecord) -> list[int]:
    """Arrivals at each staleness over all of an async run's server steps ([] for sync)."""
    total: list[int] = []
    for row in run.rows:
        counts = row.get("staleness_histogram")
        if not isinstance(counts, list):
            continue
        total += [0] * (len(counts) - len(total))
        for s, c in enumerate(counts):
            total[s] += c if isinstance(c, int) else 0
    return total


def _staleness(runs: list[RunRecord], labels: list[str]) -> Figure | None:
    """Bars per async run: the share of its updates that arrived s steps stale."""
    counted = [(_staleness_counts(run), label) for run, label in zip(runs, labels, strict=True)]
    tracked = [(counts, label) for counts, label in counted if sum(counts)]
    if not tracked:
        return None
    fig, ax = new_axes()
    width = 0.8 / len(tracked)
    for i, (counts, label) in enumerate(tracked):
        total = sum(counts)
        mean = sum(s * c for s, c in enumerate(counts)) / total
        xs = np.arange(len(counts)) + (i - (len(tracked) - 1) / 2) * width
        shares = [100.0 * c / total for c in counts]
        caption = f"{label}: {total} updates, mean {mean:.2f}, max {len(counts) - 1}"
        ax.bar(xs, shares, width=width, color=run_colour(i, len(tracked)), label=caption)
    integer_ticks(ax.xaxis)
    title = "Async: staleness of the updates the server applied"
    finish_axes(ax, title, "Staleness (server steps since the client's model)", "Updates (%)")
    return fig


_update_norms = mean_and_max("Client update norms per round", "L2 norm of a client's update", "update_norm")


_clipping = functools.partial(
    rounds_chart,
    title="Update clipping per round",
    axes=(
        Axis("Updates clipped (% of clients)", (Line("clipped_fraction"),)),
        Axis("Clipping bound (L2 norm)", (Line("clip_norm"),)),
    ),
)


_epsilon = functools.partial(
    rounds_chart,
    title="Privacy spent: ε after each round (at the configured δ)",
    axes=(Axis("ε (cumulative privacy loss)", (Line("epsilon"),)),),
)


_staleness_over_steps = mean_and_max(
    "Async: staleness per server step", "Staleness (server steps)", "staleness"
)


def _federated_chart(measure: str, label: str):
    """A chart of federated evaluation's ``measure`` (accuracy or loss): sample-weighted
    over the evaluated clients, and their worst 10% dashed."""
    return functools.partial(
        rounds_chart,
        title=f"Federated evaluation: {measure} on clients' own data (worst 10% dashed)",
        axes=(
            Axis(
                label,
                (
                    Line(f"federated_{measure}", "-", " (sample-weighted)"),
                    Line(f"federated_{measure}_worst10", "--", " (worst 10%)"),
                ),
            ),
        ),
    )


_federated_accuracy = _federated_chart("accuracy", "Accuracy on evaluated clients (%)")


_federated_loss_chart = _federated_chart("loss", "Loss on evaluated clients")


def _federated_loss(runs: list[RunRecord], labels: list[str]) -> Figure | None:
    """Regression runs' federated evaluation (they have no accuracy chart to show it)."""
    tracked = runs_with(runs, labels, lambda run: not has_accuracy(run))
    return _federated_loss_chart([r for r, _ in tracked], [lab for _, lab in tracked]) if tracked else None


def _participation_counts(run: RunRecord) -> list[int]:
    """Rounds each client trained in, for every client id (never-sampled clients count 0);
    [] when the run did not log which clients trained."""
    rounds = [row["clients"] for row in run.rows if isinstance(row.get("clients"), list)]
    if not rounds:
        return []
    counts = Counter(client for ids in rounds for client in ids)
    num_clients = config_value(run.config, "data.num_clients")
    population = max(num_clients if isinstance(num_clients, int) else 0, max(counts, default=-1) + 1)
    return [counts.get(client, 0) for client in range(population)]


def _participation(runs: list[RunRecord], labels: list[str]) -> Figure | None:
    """Histogram per run: how many clients trained in 0, 1, 2, ... rounds."""
    pairs = zip((_participation_counts(run) for run in runs), labels, strict=True)
    tracked = [(counts, label) for counts, label in pairs if counts]
    if not tracked:
        return None
    fig, ax = new_axes()
    bins = np.arange(-0.5, max(max(counts) for counts, _ in tracked) + 1.5)
    captioned = []
    for counts, label in tracked:
        spread = f"min {min(counts)}, max {max(counts)}, mean {np.mean(counts):.1f}"
        captioned.append((counts, f"{label}: {spread} over {len(counts)} clients"))
    overlaid_histograms(ax, captioned, bins)
    integer_ticks(ax.xaxis)
    title = "Client participation: rounds each client trained"
    finish_axes(ax, title, "Rounds participated", "Number of clients")
    return fig


def _last_evaluation(run: RunRecord) -> tuple[int, list[float]] | None:
    """(round, per-client accuracies in %) of the run's last federated evaluation, or None."""
    if not run.client_evals or not has_accuracy(run):
        return None
    last = max(row["round"] for row in run.client_evals)
    return last, [100.0 * row["accuracy"] for row in run.client_evals if row["round"] == last]


def _spread(run: RunRecord, rnd: int, accs: list[float]) -> tuple[float, float]:
    """(std, worst-10% mean) in %: the metrics row's when logged, else from the client rows."""
    row = next((r for r in run.rows if r["round"] == rnd), {})
    std, worst10 = metric(row, "federated_accuracy_std"), metric(row, "federated_accuracy_worst10")
    return (
        float(np.std(accs)) if std is None else 100.0 * std,
        worst_share_mean(accs) if worst10 is None else 100.0 * worst10,
    )


def _client_accuracy(runs: list[RunRecord], labels: list[str]) -> Figure | None:
    """Histogram per run of the per-client accuracy at its last federated evaluation."""
    pairs = zip(runs, labels, (_last_evaluation(run) for run in runs), strict=True)
    tracked = [(run, label, evaluation) for run, label, evaluation in pairs if evaluation]
    if not tracked:
        return None
    fig, ax = new_axes()
    every = [acc for _, _, (_, accs) in tracked for acc in accs]
    bins = np.linspace(min(every), max(every), 21) if max(every) > min(every) else 20
    captioned = []
    for run, label, (rnd, accs) in tracked:
        std, worst10 = _spread(run, rnd, accs)
        captioned.append((accs, f"{label}, round {rnd}: std {std:.1f} pp, worst 10% {worst10:.1f}%"))
    overlaid_histograms(ax, captioned, bins)
    title = "Fairness: per-client accuracy at the last federated evaluation"
    finish_axes(ax, title, "Accuracy on the client's held-out data (%)", "Number of clients")
    return fig


PERSONAL_MODELS = (("accuracy", "global model"), ("personal_accuracy", "personalized"),
                   ("finetuned_accuracy", "global, fine-tuned"))  # fmt: skip


def _last_personal_evaluation(run: RunRecord) -> dict[str, list[float]]:
    """Per model kind, the per-client accuracies (%) at the run's last federated evaluation
    that measured a personalized or fine-tuned model ({} when none did)."""
    rounds = [r["round"] for r in run.client_evals if "personal_accuracy" in r or "finetuned_accuracy" in r]
    if not rounds:
        return {}
    last = [r for r in run.client_evals if r["round"] == max(rounds)]
    return {
        key: [100.0 * r[key] for r in last if isinstance(r.get(key), (int, float))]
        for key, _ in PERSONAL_MODELS
        if any(key in r for r in last)
    }


def _personalization(runs: list[RunRecord], labels: list[str]) -> Figure | None:
    """Per run, box plots of per-client accuracy under the global model, each client's
    personalized model and the fine-tuned global model, with mean and worst 10%."""
    evaluated = [(label, _last_personal_evaluation(run)) for run, label in zip(runs, labels, strict=True)]
    evaluated = [(label, kinds) for label, kinds in evaluated if kinds]
    if not evaluated:
        return None
    fig, ax = new_axes()
    ticks, tick_labels, drawn = [], [], set()
    for i, (label, kinds) in enumerate(evaluated):
        for j, (key, _) in enumerate(PERSONAL_MODELS):
            values = kinds.get(key)
            if not values:
                continue
            x = i * (len(PERSONAL_MODELS) + 1) + j
            colour = run_colour(j, len(PERSONAL_MODELS))
            box = ax.boxplot([values], positions=[x], widths=0.7, patch_artist=True, showmeans=True)
            box["boxes"][0].set(facecolor=colour, alpha=0.45)
            drawn.add(j)
            summary = f"{np.mean(values):.1f} / {worst_share_mean(values):.1f}"
            ax.annotate(summary, (x, 3), ha="center", va="bottom", rotation=90, fontsize=7)
        ticks.append(i * (len(PERSONAL_MODELS) + 1) + 1)
        tick_labels.append(label)
    ax.set_xticks(ticks, tick_labels)
    ax.set_ylim(0, 102)
    title = "Personalization: per-client accuracy on own held-out data"
    xlabel = "Run (each box: clients at the last evaluation; written: mean / worst 10%, triangle: mean)"
    finish_axes(ax, title, xlabel, "Client accuracy (%)")
    for j in sorted(drawn):
        ax.plot([], [], "s", color=run_colour(j, len(PERSONAL_MODELS)), label=PERSONAL_MODELS[j][1])
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=len(drawn), fontsize=9)
    return fig


@dataclass(frozen=True)
class ConditionalPanel:
    """A chart drawn only when its metrics exist in at least one run."""

    panel_id: str
    filename: str
    title: str
    draw: Any  # (runs, labels) -> Figure | None


OPTIONAL_PANELS = (
    ConditionalPanel(
        "panel-gradient-flow",
        "gradient_flow.png",
        "Gradient flow: per-layer gradient norm over rounds",
        _gradient_flow_over_rounds,
    ),
    ConditionalPanel(
        "panel-gradient-flow-last",
        "gradient_flow_last_round.png",
        "Gradient flow in the last round",
        _gradient_flow_last_round,
    ),
    ConditionalPanel(
        "panel-prune-accuracy",
        "prune_accuracy.png",
        "Pruning: accuracy against sparsity",
        prune_accuracy_panel,
    ),
    ConditionalPanel(
        "panel-prune-layers", "prune_layers.png", "Pruning: per-layer density", prune_layers_panel
    ),
    ConditionalPanel("panel-density", "density.png", "Density over rounds", _density_over_rounds),
    ConditionalPanel(
        "panel-accuracy-vs-simulated-time",
        "accuracy_vs_simulated_time.png",
        "Test accuracy against simulated time",
        _accuracy_vs_simulated_time,
    ),
    ConditionalPanel("panel-staleness", "staleness.png", "Async: staleness of applied updates", _staleness),
    ConditionalPanel(
        "panel-staleness-over-steps",
        "staleness_over_steps.png",
        "Async: staleness per server step",
        _staleness_over_steps,
    ),
    ConditionalPanel(
        "panel-participation",
        "participation.png",
        "Client participation: rounds each client trained",
        _participation,
    ),
    ConditionalPanel(
        "panel-client-accuracy",
        "client_accuracy.png",
        "Fairness: per-client accuracy at the last federated evaluation",
        _client_accuracy,
    ),
    ConditionalPanel(
        "panel-personalization",
        "personalization.png",
        "Personalization: global against personalized per-client accuracy",
        _personalization,
    ),
    ConditionalPanel(
        "panel-federated-accuracy",
        "federated_accuracy.png",
        "Federated evaluation: accuracy over rounds",
        _federated_accuracy,
    ),
    ConditionalPanel(
        "panel-federated-loss",
        "federated_loss.png",
        "Federated evaluation: loss over rounds (regression)",
        _federated_loss,
    ),
    ConditionalPanel("panel-update-norms", "update_norms.png", "Client update norms", _update_norms),
    ConditionalPanel("panel-clipping", "clipping.png", "Update clipping", _clipping),
    ConditionalPanel("panel-epsilon", "epsilon.png", "Differential privacy: ε over rounds", _epsilon),
    ConditionalPanel(
        "panel-participation-by-speed",
        "participation_by_speed.png",
        "Participation by device speed decile",
        participation_by_speed,
    ),
    ConditionalPanel(
        "panel-participation-by-availability",
        "participation_by_availability.png",
        "Participation by availability",
        participation_by_availability,
    ),
    ConditionalPanel(
        "panel-selection-fairness",
        "selection_fairness.png",
        "Fairness of selection: selections per client",
        selection_fairness,
    ),
    ConditionalPanel(
        "panel-round-length", "round_length.png", "Round length on the simulated clock", round_length
    ),
)
