"""fedsim's exceptions: one root, a few children.

They live in ``clients/`` because every package may raise them and the
dependency direction (simulator -> server -> clients) lets all of them import
from here.
"""


class FedsimError(Exception):
    """Root of every error fedsim reports to a user (exit code 2 at the CLI)."""


class ConfigError(FedsimError):
    """A config file, key or value is not acceptable."""


class ModelError(ConfigError):
    """The model a config names cannot be imported or built, or does not fit the data."""


class DataError(FedsimError):
    """A dataset is missing, malformed or cannot be partitioned as asked."""


class ClusterError(FedsimError):
    """Ray could not be started, reached, or gave too few resources."""


class ClientFailure(FedsimError):
    """A client's local training raised; names the client and round."""

    def __init__(self, client_id: int, round_: int, message: str):
        super().__init__(f"client {client_id} failed in round {round_}: {message}")
        self.client_id = client_id
        self.round = round_
        self.detail = message

    def __reduce__(self):
        # Ray pickles a worker's exception to the driver; the default reduction would call
        # __init__ with the formatted text alone and fail, turning the failure into a traceback.
        return (type(self), (self.client_id, self.round, self.detail))


class RunDiverged(FedsimError):
    """Training stopped learning anything finite (every update non-finite, or the model's
    loss non-finite) for too many rounds in a row; names the round and the likely cause.
    The run directory holds the last finite model (exit code 3 at the CLI)."""
