"""The random streams of a run: one table of the purposes that key them.

Every random draw of a run comes from ``np.random.default_rng(np.random.SeedSequence(key))``
where ``key`` is the run seed, the coordinates the draw depends on (see :class:`Key`) and
last a purpose from :class:`Stream`. A draw therefore does not depend on which worker
makes it or when, and two draws are independent exactly when their keys differ.

Keys of different lengths never meet. SeedSequence treats a key of fewer than four words
as if padded with zeros to four ([s, p] draws as [s, p, 0, 0]), and no purpose is 0, so a
key that ends in its purpose is never a shorter one padded; from four words on nothing is
padded and every further word, 0 included, changes the draw. So a purpose must be unique
among the streams whose keys are as long as its own; ``tests/test_streams.py`` checks
that, and that no module keeps a purpose of its own. The one number used twice, 7, is
SERVER_NOISE (a three-word key) and COMPRESSION (a four-word one): two independent streams.

The values are part of every result: changing one changes the numbers of every run that
draws from that stream, and a run directory written before would resume differently.
The built-in datasets' splits (clients/data/datasets.py) draw from the seed alone.
"""

from __future__ import annotations

import enum

# Appended to the system model's keys when FedBuff draws them per event rather than per
# round, so an event's draw is never a synchronous round's (server/asynchronous.py).
EVENT_KEY_SUFFIX = 1


class Key(enum.Enum):
    """The coordinates before the purpose in a stream's key."""

    RUN = "seed"
    ROUND = "seed, round"  # FedBuff's sampling puts the event where the round would be
    DEVICE = "seed, device"
    CLIENT = "seed, round, client"  # clients.training.client_rng
    SYSTEM = "seed, round, client + 1"  # client -1 (0 in the key): one draw for the whole round

    @property
    def length(self) -> int:
        """Words in the key, the purpose included."""
        return len(self.value.split(",")) + 1


@enum.unique
class Stream(int, enum.Enum):
    """A purpose: the int that ends a stream's key. A member's value is (its key, the
    purpose), so that a number may serve two keys of different lengths."""

    key: Key

    def __new__(cls, key: Key, purpose: int) -> Stream:
        member = int.__new__(cls, purpose)
        member._value_ = (key, purpose)
        member.key = key
        return member

    def __repr__(self) -> str:
        return f"<Stream.{self.name}: {int(self)}, {self.key.name.lower()} key>"

    INIT = Key.RUN, 0x1A17  # initial weights (a module model's torch seed too)
    PARTITION = Key.RUN, 3  # which training rows each client holds
    ATTACKERS = Key.RUN, 5  # which clients are malicious
    PRUNING = Key.RUN, 8  # random pruning's scores
    HOLDOUT = Key.RUN, 10  # each client's rows held out for federated evaluation
    TEST_SPLIT = Key.RUN, 18  # users' data without a test split: the rows held out
    TRACE_PROFILES = Key.RUN, 22  # which device-trace profile each client gets (mapping: seeded)
    SYNTHETIC_TRACE = Key.RUN, 24  # `fedsim traces make`'s generated devices (its --seed)

    SAMPLING = Key.ROUND, 2  # the clients sampled (uniform or Poisson; FedBuff: per event)
    SERVER_NOISE = Key.ROUND, 7  # the server's Gaussian noise on the aggregate (DP)
    FEDERATED_EVAL = Key.ROUND, 15  # the clients that evaluate the model
    SELECTION = Key.ROUND, 23  # Oort's exploration and exploitation draws, power-of-choice's candidates

    SYNTHETIC_DEVICE = Key.DEVICE, 0x5E  # a generated Synthetic(alpha, beta) device's rows

    DATA_ORDER = Key.CLIENT, 1  # the order of a client's minibatches
    LOCAL_DROPOUT = Key.CLIENT, 4  # dropout layers' masks in local training
    ATTACK_NOISE = Key.CLIENT, 6  # a malicious client's crafted update
    COMPRESSION = Key.CLIENT, 7  # qsgd8's stochastic rounding of the sent update
    SCORES = Key.CLIENT, 9  # dropout masks while computing pruning scores (round 0)
    PERSONAL = Key.CLIENT, 16  # the extra draws of personalised training
    FINETUNE = Key.CLIENT, 17  # the order of fine-tuning's minibatches
    FINETUNE_DROPOUT = Key.CLIENT, 117  # dropout masks in fine-tuning (FINETUNE + 100)
    AUGMENT = Key.CLIENT, 19  # image augmentation's crops and flips

    SPEED = Key.SYSTEM, 11  # each client's fixed speed (round 0)
    AVAILABLE = Key.SYSTEM, 12  # which clients are online
    SYSTEM_DROPOUT = Key.SYSTEM, 13  # which selected clients fail to report
    STRAGGLERS = Key.SYSTEM, 20  # which selected clients straggle (client -1: one draw a round)
    STRAGGLER_EPOCHS = Key.SYSTEM, 21  # a straggler's local epochs
