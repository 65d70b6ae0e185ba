"""Tests for clients.data.leaf: LEAF JSON -> Dataset with natural clients (FEMNIST, Shakespeare)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clients.data.leaf import ALL_LETTERS, load_femnist, load_leaf, load_shakespeare
from clients.errors import DataError

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _write_shard(path: Path, user_data: dict, num_samples: dict | None = None) -> Path:
    """One LEAF JSON shard; num_samples defaults to each user's true count."""
    users = list(user_data)
    counts = [len(user_data[u]["y"]) if num_samples is None else num_samples[u] for u in users]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"users": users, "num_samples": counts, "user_data": user_data}))
    return path


def _femnist_rows(label: int, count: int) -> dict:
    """count images whose pixels all equal label / 100 (so rows can be traced back), labelled label."""
    return {"x": [[label / 100] * 784 for _ in range(count)], "y": [label] * count}


def _write_femnist(split_root: Path) -> None:
    """3 writers over 2 shards per split; 'f2' is split across both train shards, 'f9' is test-only."""
    _write_shard(split_root / "train" / "a.json", {"f2": _femnist_rows(2, 2), "f1": _femnist_rows(1, 3)})
    _write_shard(split_root / "train" / "b.json", {"f2": _femnist_rows(61, 1)})
    _write_shard(split_root / "test" / "a.json", {"f1": _femnist_rows(10, 1)})
    _write_shard(split_root / "test" / "b.json", {"f9": _femnist_rows(9, 2)})


def _window(text: str) -> str:
    """text repeated/cut to LEAF's 80-character window."""
    return (text * 80)[:80]


def _write_shakespeare(split_root: Path, test_num_samples: int | None = None) -> None:
    """2 roles over 2 train shards; the test shard may carry LEAF's overstated num_samples."""
    _write_shard(
        split_root / "train" / "0.json", {"B_ROLE": {"x": [_window("ab"), _window("Z}")], "y": ["c", "\n"]}}
    )
    _write_shard(split_root / "train" / "1.json", {"A_ROLE": {"x": [_window("x y")], "y": ["!"]}})
    test_data = {"A_ROLE": {"x": [_window("q.")], "y": ["?"]}}
    counts = None if test_num_samples is None else {"A_ROLE": test_num_samples}
    _write_shard(split_root / "test" / "0.json", test_data, counts)


def test_femnist_shapes_dtypes_labels_and_owners(tmp_path):
    # Setup
    _write_femnist(tmp_path / "femnist" / "data")

    # Execute
    data, users = load_leaf(tmp_path, "femnist")

    # Assert: users sorted over train ∪ test; rows grouped by user in that order.
    assert users == ["f1", "f2", "f9"]
    assert data.name == "femnist" and data.num_classes == 62 and data.input_shape == (1, 28, 28)
    assert data.x_train.shape == (6, 1, 28, 28) and data.x_test.shape == (3, 1, 28, 28)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    np.testing.assert_array_equal(data.y_train, [1, 1, 1, 2, 2, 61])
    np.testing.assert_array_equal(data.train_owner, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(data.y_test, [10, 9, 9])
    np.testing.assert_array_equal(data.test_owner, [0, 2, 2])
    # LEAF's pixel values are kept as they are (no rescaling or inversion).
    np.testing.assert_allclose(data.x_train[:, 0, 0, 0], np.float32([0.01] * 3 + [0.02] * 2 + [0.61]))


@pytest.mark.parametrize("layout", ["femnist/data", "femnist", "."])
def test_femnist_accepts_each_layout(tmp_path, layout):
    # Setup
    _write_femnist(tmp_path / layout)

    # Execute
    data = load_femnist(tmp_path)

    # Assert
    assert len(data.y_train) == 6 and len(data.y_test) == 3


def test_shakespeare_token_ids_match_leaf_vocabulary(tmp_path):
    # Setup
    _write_shakespeare(tmp_path / "shakespeare")

    # Execute
    data, users = load_leaf(tmp_path, "shakespeare")

    # Assert: id = ALL_LETTERS.find(char), as LEAF's letter_to_index.
    def ids(text: str) -> list[int]:
        return [ALL_LETTERS.find(char) for char in text]

    assert len(ALL_LETTERS) == 80 and data.num_classes == 80 and data.input_shape == (80,)
    assert users == ["A_ROLE", "B_ROLE"]
    assert data.x_train.dtype == np.uint8 and data.x_train.shape == (3, 80)
    np.testing.assert_array_equal(data.x_train[0], ids(_window("x y")))
    np.testing.assert_array_equal(data.x_train[1], ids(_window("ab")))
    np.testing.assert_array_equal(data.x_train[2], ids(_window("Z}")))
    np.testing.assert_array_equal(data.y_train, ids("!c\n"))
    np.testing.assert_array_equal(data.train_owner, [0, 1, 1])
    np.testing.assert_array_equal(data.test_owner, [0])
    assert data.x_train[2, 1] == 79 and data.y_train[2] == 0  # '}' is the last id, '\n' the first


def test_shakespeare_test_num_samples_may_overstate_rows(tmp_path):
    # Setup: LEAF counts test windows before dropping the 79-window gap.
    _write_shakespeare(tmp_path, test_num_samples=80)

    # Execute
    data = load_shakespeare(tmp_path)

    # Assert: len(x) is trusted.
    assert data.x_test.shape == (1, 80)


def test_shakespeare_train_num_samples_mismatch_is_an_error(tmp_path):
    # Setup
    _write_shard(tmp_path / "train" / "0.json", {"R": {"x": [_window("a")], "y": ["b"]}}, {"R": 2})
    _write_shard(tmp_path / "test" / "0.json", {"R": {"x": [_window("a")], "y": ["b"]}})

    # Execute / Assert
    with pytest.raises(DataError, match=r"0\.json, user 'R': num_samples is 2 but x and y hold 1"):
        load_shakespeare(tmp_path)


def test_shakespeare_unknown_character_names_file_user_and_char(tmp_path):
    # Setup: '#' is not in LEAF's vocabulary.
    _write_shakespeare(tmp_path)
    _write_shard(tmp_path / "train" / "1.json", {"A_ROLE": {"x": [_window("a#")], "y": ["!"]}})

    # Execute / Assert
    with pytest.raises(DataError, match=r"train/1\.json, user 'A_ROLE': character '#' is not in LEAF"):
        load_shakespeare(tmp_path)


def test_shakespeare_non_ascii_character_is_an_error(tmp_path):
    # Setup
    _write_shakespeare(tmp_path)
    _write_shard(tmp_path / "test" / "0.json", {"A_ROLE": {"x": [_window("a")], "y": ["é"]}})

    # Execute / Assert
    with pytest.raises(DataError, match=r"test/0\.json, user 'A_ROLE': character 'é'"):
        load_shakespeare(tmp_path)


def test_shakespeare_wrong_window_width_is_an_error(tmp_path):
    # Setup
    _write_shakespeare(tmp_path)
    _write_shard(tmp_path / "train" / "1.json", {"A_ROLE": {"x": ["too short"], "y": ["!"]}})

    # Execute / Assert
    with pytest.raises(DataError, match=r"1\.json, user 'A_ROLE': each x must be a 80-character string"):
        load_shakespeare(tmp_path)


def test_femnist_wrong_width_names_file_and_user(tmp_path):
    # Setup
    _write_femnist(tmp_path)
    _write_shard(tmp_path / "train" / "b.json", {"f2": {"x": [[0.5] * 783], "y": [3]}})

    # Execute / Assert
    with pytest.raises(DataError, match=r"train/b\.json, user 'f2': each x row must be a list of 784"):
        load_femnist(tmp_path)


def test_femnist_ragged_rows_are_an_error(tmp_path):
    # Setup
    _write_femnist(tmp_path)
    _write_shard(tmp_path / "train" / "b.json", {"f2": {"x": [[0.5] * 784, [0.5] * 10], "y": [3, 4]}})

    # Execute / Assert
    with pytest.raises(DataError, match=r"b\.json, user 'f2': each x row must be a list of 784"):
        load_femnist(tmp_path)


def test_femnist_num_samples_mismatch_in_test_is_an_error(tmp_path):
    # Setup: unlike Shakespeare, FEMNIST's test counts are exact in LEAF.
    _write_femnist(tmp_path)
    _write_shard(tmp_path / "test" / "a.json", {"f1": _femnist_rows(10, 1)}, {"f1": 5})

    # Execute / Assert
    with pytest.raises(DataError, match=r"test/a\.json, user 'f1': num_samples is 5 but x and y hold 1"):
        load_femnist(tmp_path)


def test_femnist_x_y_length_mismatch_is_an_error(tmp_path):
    # Setup
    _write_femnist(tmp_path)
    _write_shard(tmp_path / "train" / "b.json", {"f2": {"x": [[0.5] * 784], "y": [1, 2]}}, {"f2": 1})

    # Execute / Assert
    with pytest.raises(DataError, match=r"b\.json, user 'f2': 'x' and 'y' must be lists of equal length"):
        load_femnist(tmp_path)


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        ({"x": [[255.0] * 784], "y": [1]}, r"pixels must lie in \[0, 1\]"),
        ({"x": [[0.5] * 784], "y": [62]}, r"labels must lie in 0\.\.61"),
        ({"x": [[0.5] * 784], "y": ["A"]}, "y must be a list of integer labels"),
    ],
)
def test_femnist_out_of_range_values_are_errors(tmp_path, bad_row, message):
    # Setup
    _write_femnist(tmp_path)
    _write_shard(tmp_path / "train" / "b.json", {"f2": bad_row})

    # Execute / Assert
    with pytest.raises(DataError, match=rf"b\.json, user 'f2': {message}"):
        load_femnist(tmp_path)


def test_malformed_json_names_the_file(tmp_path):
    # Setup
    _write_femnist(tmp_path)
    (tmp_path / "test" / "b.json").write_text('{"users": [')

    # Execute / Assert
    with pytest.raises(DataError, match=r"test/b\.json: not readable LEAF JSON"):
        load_femnist(tmp_path)


def test_shard_without_leaf_keys_names_the_file(tmp_path):
    # Setup
    _write_femnist(tmp_path)
    (tmp_path / "test" / "b.json").write_text('{"users": ["f9"], "user_data": {}}')

    # Execute / Assert
    with pytest.raises(DataError, match=r"test/b\.json: a LEAF shard must be an object with 'users'"):
        load_femnist(tmp_path)


def test_missing_folders_name_the_layout_and_the_leaf_command(tmp_path):
    # Setup: only train/ exists, so no layout matches.
    (tmp_path / "femnist" / "data" / "train").mkdir(parents=True)

    # Execute / Assert
    with pytest.raises(DataError) as raised:
        load_femnist(tmp_path)
    message = str(raised.value)
    assert f"searched {tmp_path}/femnist/data/{{train,test}}, {tmp_path}/femnist/{{train,test}}" in message
    assert "cannot be downloaded ready-made" in message
    assert "cd leaf/data/femnist && ./preprocess.sh -s niid --sf 0.05 -k 0 -t sample" in message
    assert "\n" not in message


def test_split_folder_without_json_is_an_error(tmp_path):
    # Setup
    _write_shakespeare(tmp_path)
    (tmp_path / "test" / "0.json").unlink()

    # Execute / Assert
    with pytest.raises(DataError, match=r"no \*\.json shards in .*test; .*-t sample -tf 0\.8"):
        load_shakespeare(tmp_path)


def test_unknown_leaf_dataset_is_an_error(tmp_path):
    with pytest.raises(DataError, match="unknown LEAF dataset 'sent140'"):
        load_leaf(tmp_path, "sent140")


@pytest.mark.slow
def test_shared_archives_round_trip_through_leaf_json(tmp_path):
    """The first 40 writers of FEMNIST's archive (the JSON of all 41k images alone took
    15 s) and Shakespeare's 10 speakers, in shards of 15: FEMNIST's split spans three files."""
    # Setup: the offline copies of LEAF output, written back as LEAF JSON by the bench script.
    if not SHARED_DATA.is_dir():
        pytest.skip(f"offline LEAF archives not present at {SHARED_DATA}")
    script = REPO / "bench" / "leaf_from_shared.py"
    users = 40
    subprocess.run(
        [sys.executable, script, "--shared", SHARED_DATA, "--out", tmp_path, "--max-users", str(users),
         "--users-per-shard", "15"],
        check=True,
    )  # fmt: skip
    assert len(list((tmp_path / "femnist" / "data" / "train").glob("*.json"))) == 3

    # Execute
    femnist, femnist_users = load_leaf(tmp_path, "femnist")
    shakespeare, shakespeare_users = load_leaf(tmp_path, "shakespeare")

    # Assert: counts and values equal the archives' first writers'.
    with np.load(SHARED_DATA / "femnist" / "femnist_leaf_300writers.npz", allow_pickle=False) as archive:
        rows, test_rows = archive["train_offsets"][users], archive["test_offsets"][users]
        assert femnist_users == sorted(archive["users"][:users]) and len(femnist_users) == users
        assert femnist.x_train.shape == (rows, 1, 28, 28) and len(femnist.y_test) == test_rows
        np.testing.assert_array_equal(np.rint(femnist.x_train[:, 0] * 255), archive["x_train"][:rows])
        np.testing.assert_array_equal(femnist.y_test, archive["y_test"][:test_rows])
        np.testing.assert_array_equal(
            np.bincount(femnist.train_owner), np.diff(archive["train_offsets"][: users + 1])
        )
    with np.load(
        SHARED_DATA / "shakespeare" / "shakespeare_leaf_sample10.npz", allow_pickle=False
    ) as archive:
        speakers = archive["users"][:users]  # the sample has 10
        order = np.argsort(speakers)  # the archive is not in sorted user order
        assert shakespeare_users == list(speakers[order])
        assert shakespeare.x_train.shape == (archive["train_offsets"][len(speakers)], 80)
        letters = np.frombuffer(ALL_LETTERS.encode("ascii"), dtype=np.uint8)
        first = archive["train_offsets"][order[0]]
        np.testing.assert_array_equal(letters[shakespeare.x_train[0]], archive["x_train"][first])
        np.testing.assert_array_equal(
            np.bincount(shakespeare.test_owner), np.diff(archive["test_offsets"][: len(speakers) + 1])[order]
        )
