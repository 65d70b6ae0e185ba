"""Client selection policies beyond uniform sampling: Oort and power-of-choice.

Oort (Lai et al., OSDI 2021, arXiv:2010.06081, Algorithm 1) picks participants by a
score that multiplies a client's statistical utility (how much its data would still
teach the model) by a penalty for being slower than a preferred round duration T,
explores clients never heard from, relaxes T when utility stops growing (the pacer)
and can blacklist clients chosen too often. The logic follows the authors' training
selector (SymbioticLab/Oort oort/oort.py, class _training_selector; vendored in
SymbioticLab/FedScale as thirdparty/oort/oort.py; defaults from FedScale's
config_parser.py), vectorised over per-client arrays; docs/selection.md lists each
parameter with its name there and where ours differs.

Power-of-choice (Cho, Wang, Joshi, AISTATS 2022, arXiv:2010.01243, pow-d) samples d
candidates by data size and keeps the ones with the highest local loss.

Every draw of a round comes from one generator keyed (seed, round, Stream.SELECTION),
taken in a fixed order, so a selection depends on nothing but the seed, the round and
the state, which ``arrays`` / ``load_arrays`` carry through checkpoints bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from clients.streams import Stream

# The pacer's tests on the exploited utility of the last two pacer windows (the authors'
# constants): within 10% of the window before counts as flat, 5x as a sharp change.
_FLAT_CHANGE = 0.1
_SHARP_CHANGE = 5.0
# The authors' floors against a zero division: a duration, a reward range, a weight sum.
_MIN_DURATION = 1e-4
_MIN_RANGE = 1e-4
_MIN_WEIGHT_SUM = 1e-4
# The authors normalise from 0.999 x the smallest utility, so the smallest scores just above 0.
_LOW_SCALE = 0.999

# Roles of a client in the last selection, for the pacer.
_NOT_PICKED, _EXPLOITED, _EXPLORED = 0, 1, 2


def _selection_rng(seed: int, round_: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, round_, Stream.SELECTION]))


def _weighted_without_replacement(
    rng: np.random.Generator, ids: np.ndarray, weights: np.ndarray, count: int
) -> np.ndarray:
    """``count`` of ``ids`` without replacement, each next pick with probability
    proportional to its weight among those left (as numpy's ``choice(replace=False, p=)``):
    Efraimidis and Spirakis' keys Exp(1) / w, smallest first. One exponential per id is
    drawn even when ``count`` is 0, so the draws that follow never depend on it. Zero
    weights come last, by id; all zero (or none positive) means uniform."""
    keys = rng.exponential(size=len(ids))
    if not (weights > 0).any():
        weights = np.ones(len(ids))
    with np.errstate(divide="ignore"):
        keys = np.where(weights > 0, keys / np.where(weights > 0, weights, 1.0), np.inf)
    return ids[np.lexsort((ids, keys))[:count]]


def statistical_utility(samples: np.ndarray, loss_square_mean: np.ndarray) -> np.ndarray:
    """Oort's statistical utility U_i = |B_i| sqrt(mean over B_i of loss^2) (the paper's
    Section 4.1) per client: ``samples`` (n,) the samples it processed, ``loss_square_mean``
    (n,) the mean of its squared losses. The simulator measures losses per batch, so this
    is the batch-level version: the mean of squared batch losses, weighted by batch size,
    where the paper squares each sample's loss (equal when a batch's losses are equal)."""
    return np.asarray(samples, np.float64) * np.sqrt(np.asarray(loss_square_mean, np.float64))


@dataclass(frozen=True)
class OortSettings:
    """Oort's parameters; each comment gives the authors' argument (FedScale's default)."""

    exploration: float = 0.9  # exploration_factor (0.9): initial share of exploration slots
    exploration_decay: float = 0.98  # exploration_decay (0.98): share x this every round
    exploration_min: float = 0.3  # exploration_min (0.3): floor of the share
    alpha: float = 2.0  # round_penalty (2.0): exponent of the penalty (T / duration)^alpha
    pacer_step: int = 20  # pacer_step (20): rounds in one pacer window
    pacer_delta: float = 5.0  # pacer_delta (5): percentile points the pacer moves T by
    cutoff_utility: float = 0.05  # cut_off_util (0.05): admit scores >= (1 - this) x k-th
    sample_window: float = 5.0  # sample_window (5.0): unexplored pool = this x slots
    round_threshold: float = 30.0  # round_threshold (30): T's percentile of durations
    clip_bound: float = 0.9  # clip_bound (0.9): utilities clipped at this quantile
    blacklist_rounds: int = -1  # blacklist_rounds (-1 = off): participations tolerated
    blacklist_max_share: float = 0.3  # blacklist_max_len (0.3): cap, share of clients

    def __post_init__(self) -> None:
        shares = ("exploration", "exploration_decay", "exploration_min", "cutoff_utility", "clip_bound")
        for name in shares:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.blacklist_max_share <= 1.0:
            raise ValueError(f"blacklist_max_share must be in [0, 1], got {self.blacklist_max_share}")
        if not 0.0 <= self.round_threshold <= 100.0:
            raise ValueError(f"round_threshold must be in [0, 100], got {self.round_threshold}")
        for name in ("alpha", "pacer_delta", "sample_window"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.pacer_step < 1:
            raise ValueError(f"pacer_step must be >= 1, got {self.pacer_step}")
        if self.blacklist_rounds < -1:
            raise ValueError(f"blacklist_rounds must be >= 0, or -1 for off, got {self.blacklist_rounds}")


class OortSelector:
    """Oort's training selector over ``num_clients`` clients.

    Per-client state, (num_clients,) each: ``utility`` (float64, the last statistical
    utility reported; before that the registered one), ``duration`` (float64, the last
    trip seconds known), ``last_round`` (int64, the round it last reported; 0 never),
    ``participations`` (int64, reports so far; 0 = unexplored), ``role`` (int64, exploited
    or explored in the last selection) and ``reported`` (int64, 1 when it reported since).
    """

    def __init__(
        self,
        num_clients: int,
        settings: OortSettings,
        seed: int,
        initial_utility: np.ndarray,
        initial_duration: np.ndarray,
    ):
        """``initial_utility`` and ``initial_duration`` (num_clients,): what the authors
        register for a client before it trains, its samples per round and expected trip
        seconds; exploration prefers large, fast clients by them."""
        self.settings = settings
        self.seed = seed
        self.num_clients = num_clients
        self.utility = self._per_client("initial_utility", initial_utility).copy()
        self.duration = self._per_client("initial_duration", initial_duration).copy()
        self.last_round = np.zeros(num_clients, np.int64)
        self.participations = np.zeros(num_clients, np.int64)
        self.role = np.zeros(num_clients, np.int64)
        self.reported = np.zeros(num_clients, np.int64)
        self.exploration = np.float64(settings.exploration)
        self.round_threshold = np.float64(settings.round_threshold)
        self.preferred_duration = np.float64(math.inf)
        self.blacklisted = np.int64(0)  # in the last selection
        # Summed exploited utility of the pacer's last whole window and of the one under way:
        # the authors' history list, kept as two sums so memory does not grow with pacer_step.
        self.pacer_windows = np.zeros(2, np.float64)

    def _per_client(self, name: str, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, np.float64)
        if values.shape != (self.num_clients,):
            raise ValueError(f"{name} must have shape ({self.num_clients},), got {values.shape}")
        return values

    # --- selection -------------------------------------------------------------

    def select(self, round_: int, online: np.ndarray, count: int) -> np.ndarray:
        """Sorted int64 ids: ``count`` of the sorted ``online`` ids (all when fewer)."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        online = np.asarray(online, np.int64)
        count = min(count, len(online))
        blacklisted = self._blacklist()
        self.blacklisted = np.int64(blacklisted.sum())
        self._pace(round_)
        self.preferred_duration = np.float64(self._preferred_duration())
        eligible = online[~blacklisted[online]]
        scored = eligible[self.participations[eligible] > 0]
        unexplored = online[self.participations[online] == 0]
        self.exploration = np.float64(
            max(self.exploration * self.settings.exploration_decay, self.settings.exploration_min)
        )
        exploit_len, explore_len = self._slots(count, len(scored), len(unexplored))
        rng = _selection_rng(self.seed, round_)
        exploited = self._exploit(rng, round_, eligible, scored, exploit_len)
        explored = self._explore(rng, unexplored, explore_len)
        picked = np.concatenate([exploited, explored])
        filled = self._fill(rng, online, eligible, picked, count - len(picked))
        self.role[:] = _NOT_PICKED
        self.role[exploited] = _EXPLOITED
        self.role[explored] = _EXPLORED
        return np.sort(np.concatenate([picked, filled])).astype(np.int64)

    def _slots(self, count: int, scored: int, unexplored: int) -> tuple[int, int]:
        """Exploitation and exploration slots: count - floor(count x exploration) exploit
        (FedScale's rounding), slots one side has no clients for go to the other."""
        exploit = min(count - int(count * self.exploration), scored)
        explore = min(unexplored, count - exploit)
        return min(count - explore, scored), explore

    def _blacklist(self) -> np.ndarray:
        """(num_clients,) bool: clients with more than blacklist_rounds participations, the
        most frequent first (ties: lower id), at most blacklist_max_share of all clients."""
        blacklisted = np.zeros(self.num_clients, bool)
        if self.settings.blacklist_rounds < 0:
            return blacklisted
        over = np.flatnonzero(self.participations > self.settings.blacklist_rounds)
        over = over[np.lexsort((over, -self.participations[over]))]
        blacklisted[over[: int(self.settings.blacklist_max_share * self.num_clients)]] = True
        return blacklisted

    def _pace(self, round_: int) -> None:
        """Add the mean utility of the last selection's exploited clients that reported to
        the window under way; every pacer_step-th round it closes, and from the 2 x
        pacer_step-th on it is compared with the window before: flat -> relax T's
        percentile by pacer_delta (at most 100); a sharp change -> tighten it (at least
        pacer_delta)."""
        reported = (self.role == _EXPLOITED) & (self.reported == 1)
        self.pacer_windows[1] += self.utility[reported].sum() / (_MIN_WEIGHT_SUM + reported.sum())
        self.reported[:] = 0
        step, delta = self.settings.pacer_step, self.settings.pacer_delta
        if round_ % step:
            return
        before, last = self.pacer_windows
        self.pacer_windows = np.array([last, 0.0])
        if round_ < 2 * step:
            return
        if abs(last - before) <= before * _FLAT_CHANGE:
            self.round_threshold = np.float64(min(100.0, self.round_threshold + delta))
        elif abs(last - before) >= before * _SHARP_CHANGE:
            self.round_threshold = np.float64(max(delta, self.round_threshold - delta))

    def _preferred_duration(self) -> float:
        """T: the round_threshold percentile of every client's known duration (inf at 100)."""
        if self.round_threshold >= 100.0 or not self.num_clients:
            return math.inf
        position = min(int(self.num_clients * self.round_threshold / 100.0), self.num_clients - 1)
        return float(np.sort(self.duration)[position])

    def _penalty(self, ids: np.ndarray) -> np.ndarray:
        """(T / duration)^alpha for clients slower than T, else 1."""
        duration = self.duration[ids]
        slow = duration > self.preferred_duration
        ratio = self.preferred_duration / np.maximum(_MIN_DURATION, np.where(slow, duration, 1.0))
        return np.where(slow, ratio**self.settings.alpha, 1.0)

    def _scores(self, round_: int, eligible: np.ndarray, scored: np.ndarray) -> np.ndarray:
        """Exploitation scores of ``scored`` (explored, eligible ids): utility normalised
        over the eligible clients' positive utilities (clipped at their clip_bound
        quantile), plus the staleness bonus sqrt(0.1 ln(round) / last round), times the
        penalty of slow clients."""
        positive = np.sort(self.utility[eligible][self.utility[eligible] > 0])
        if len(positive):
            clip = positive[min(int(len(positive) * self.settings.clip_bound), len(positive) - 1)]
            low = positive[0] * _LOW_SCALE
            spread = max(positive[-1] - low, _MIN_RANGE)
        else:
            clip, low, spread = math.inf, 0.0, 1.0
        # A utility of 0 (a zero loss) would score below 0: it gets only the bonus.
        normalised = np.maximum((np.minimum(self.utility[scored], clip) - low) / spread, 0.0)
        bonus = np.sqrt(0.1 * math.log(max(round_, 1)) / np.maximum(self.last_round[scored], 1))
        return (normalised + bonus) * self._penalty(scored)

    def _exploit(
        self, rng: np.random.Generator, round_: int, eligible: np.ndarray, scored: np.ndarray, count: int
    ) -> np.ndarray:
        """``count`` of ``scored``: those within cutoff_utility of the score after the
        count-th best are admitted, then drawn with probability proportional to score."""
        score = self._scores(round_, eligible, scored)
        order = np.lexsort((scored, -score))
        if len(order):
            cutoff = score[order[min(count, len(order) - 1)]] * (1.0 - self.settings.cutoff_utility)
            order = order[score[order] >= cutoff]
        return _weighted_without_replacement(rng, scored[order], score[order], count)

    def _explore(self, rng: np.random.Generator, unexplored: np.ndarray, count: int) -> np.ndarray:
        """``count`` unexplored clients: the sample_window x count best by registered utility
        (penalised when slower than T), drawn with probability proportional to it."""
        weight = self.utility[unexplored] * self._penalty(unexplored)
        pool = np.lexsort((unexplored, -weight))
        pool = pool[: max(count, int(self.settings.sample_window * count))]
        return _weighted_without_replacement(rng, unexplored[pool], weight[pool], count)

    def _fill(
        self,
        rng: np.random.Generator,
        online: np.ndarray,
        eligible: np.ndarray,
        picked: np.ndarray,
        count: int,
    ) -> np.ndarray:
        """Slots neither exploitation nor exploration could fill: uniformly from the eligible
        clients not picked (the authors' fallback), then from blacklisted online ones."""
        rest = np.setdiff1d(eligible, picked)
        blacklisted = np.setdiff1d(online, eligible)
        ranked = np.concatenate([rng.permutation(rest), rng.permutation(blacklisted)])
        return ranked[:count]

    # --- feedback --------------------------------------------------------------

    def feedback(
        self, round_: int, clients: np.ndarray, utilities: np.ndarray, durations: np.ndarray
    ) -> None:
        """The round's participants that reported: statistical utility and trip seconds."""
        clients = np.asarray(clients, np.int64)
        self.utility[clients] = np.asarray(utilities, np.float64)
        self.duration[clients] = np.asarray(durations, np.float64)
        self.last_round[clients] = round_
        self.participations[clients] += 1
        self.reported[clients] = 1

    def observe_durations(self, clients: np.ndarray, durations: np.ndarray) -> None:
        """Trip seconds of selected clients that did not report (dropped, timed out): Oort
        learns their duration (FedScale registers every sampled client's duration)."""
        self.duration[np.asarray(clients, np.int64)] = np.asarray(durations, np.float64)

    # --- checkpoints and metrics -----------------------------------------------

    _PER_CLIENT = ("utility", "duration", "last_round", "participations", "role", "reported")
    _SCALARS = ("exploration", "round_threshold", "preferred_duration", "blacklisted")

    def arrays(self) -> dict[str, np.ndarray]:
        """Every piece of state as named arrays (copies), for a checkpoint."""
        out = {name: getattr(self, name).copy() for name in self._PER_CLIENT}
        out.update({name: np.asarray(getattr(self, name)).copy() for name in self._SCALARS})
        out["pacer_windows"] = self.pacer_windows.copy()
        return out

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore what ``arrays`` returned; a missing or misshapen array is a ValueError."""
        expected = self.arrays()
        for name, current in expected.items():
            if name not in arrays:
                raise ValueError(f"Oort's state lacks {name!r}")
            value = np.asarray(arrays[name])
            if value.shape != current.shape:
                raise ValueError(f"Oort's {name!r} has shape {value.shape}, expected {current.shape}")
            value = value.astype(current.dtype, copy=True)
            setattr(self, name, value if name in self._PER_CLIENT or name == "pacer_windows" else value[()])

    def metrics(self) -> dict[str, float]:
        """The last selection for a round's row: exploration share, T (absent while
        infinite), T's percentile, clients explored so far, blacklisted, exploited and
        explored in this selection."""
        out = {
            "exploration": float(self.exploration),
            "round_threshold": float(self.round_threshold),
            "explored_clients": float((self.participations > 0).sum()),
            "blacklisted": float(self.blacklisted),
            "exploited": float((self.role == _EXPLOITED).sum()),
            "explored": float((self.role == _EXPLORED).sum()),
        }
        if math.isfinite(self.preferred_duration):
            out["preferred_duration"] = float(self.preferred_duration)
        return out


class PowerOfChoice:
    """Power-of-choice (Cho, Wang, Joshi, AISTATS 2022, arXiv:2010.01243), pow-d: d
    candidates drawn by data size, of which the ``count`` with the highest local loss
    on the current model take part."""

    @staticmethod
    def candidates(seed: int, round_: int, online: np.ndarray, d: int, sizes: np.ndarray) -> np.ndarray:
        """Sorted ids: d of ``online`` without replacement, with probability proportional to
        their data size (the paper's p_k); all of them when d >= len(online). ``sizes``
        (num_clients,) samples per client."""
        online = np.asarray(online, np.int64)
        if d < 0:
            raise ValueError(f"d must be >= 0, got {d}")
        if d >= len(online):
            return np.sort(online)
        weights = np.asarray(sizes, np.float64)[online]
        return np.sort(_weighted_without_replacement(_selection_rng(seed, round_), online, weights, d))

    @staticmethod
    def pick(candidates: np.ndarray, losses: np.ndarray, count: int) -> np.ndarray:
        """Sorted ids: the ``count`` candidates with the highest local loss (``losses``
        aligned with ``candidates``; ties: lower id first; a nan loss ranks last)."""
        candidates = np.asarray(candidates, np.int64)
        losses = np.asarray(losses, np.float64)
        if losses.shape != candidates.shape:
            raise ValueError(f"losses must have shape {candidates.shape}, got {losses.shape}")
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        missing = np.isnan(losses)
        order = np.lexsort((candidates, -np.where(missing, 0.0, losses), missing))
        return np.sort(candidates[order[:count]])
