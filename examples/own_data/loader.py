"""An example of ``data.loader``: your own arrays, with natural clients.

``load()`` takes no arguments and returns a dict of numpy arrays: x_train (N, ...) and
y_train (N,) and the same for the test split, plus, optionally, client_train and
client_test: each row's client (any values; one natural client per distinct value).

Here: 40 "sensors", each with its own offset on three features, label = which of three
activities the reading came from. Run it from the repository root:

    fedsim run examples/own_data/config.yaml
"""

import numpy as np

SENSORS, ROWS_PER_SENSOR, ACTIVITIES = 40, 60, 3


def load() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    sensor = np.repeat(np.arange(SENSORS), ROWS_PER_SENSOR)
    activity = rng.integers(0, ACTIVITIES, len(sensor))
    centres = np.array([[0.0, 1.0, 2.0], [2.0, 0.0, 1.0], [1.0, 2.0, 0.0]])
    offsets = rng.normal(0.0, 0.5, (SENSORS, 3))  # each sensor is calibrated differently
    x = centres[activity] + offsets[sensor] + rng.normal(0.0, 0.7, (len(sensor), 3))
    test = rng.random(len(sensor)) < 0.2  # each sensor keeps about a fifth of its rows for testing
    names = np.array([f"sensor-{s:02d}" for s in sensor])
    return {
        "x_train": x[~test].astype(np.float32), "y_train": activity[~test], "client_train": names[~test],
        "x_test": x[test].astype(np.float32), "y_test": activity[test], "client_test": names[test],
    }  # fmt: skip
