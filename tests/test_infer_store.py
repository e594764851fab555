"""The embedding store refuses corrupt sets and sets that cannot be compared."""
import json

import numpy as np
import pytest

from dpcompat.common.errors import InputError
from dpcompat.infer.metadata import Preprocessing
from dpcompat.infer.store import check_comparable, read_set, set_path
from onnx_fixtures import write_random_set


def test_round_trip(tmp_path):
    written = write_random_set(tmp_path / "task1" / "cifar10-test", "task1")
    stored = read_set(tmp_path / "task1" / "cifar10-test")
    np.testing.assert_array_equal(stored.embeddings, written.embeddings)
    np.testing.assert_array_equal(stored.labels, written.labels)
    assert stored.manifest == written.manifest and stored.model_id == "task1" and (stored.count, stored.dim) == (40, 8)
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # no temporary leftovers


def corrupt(path, how):
    if how == "truncated embeddings":
        data = (path / "embeddings.npy").read_bytes()
        (path / "embeddings.npy").write_bytes(data[: len(data) // 2])
    elif how == "missing labels":
        (path / "labels.npy").unlink()
    elif how == "labels count":
        np.save(path / "labels.npy", np.zeros(39, np.int64))
    elif how == "labels dtype":
        np.save(path / "labels.npy", np.zeros(40, np.float32))
    elif how == "manifest count":
        m = json.loads((path / "manifest.json").read_text())
        m["count"] = 41
        (path / "manifest.json").write_text(json.dumps(m))
    elif how == "manifest json":
        (path / "manifest.json").write_text("{not json")
    elif how == "manifest field":
        m = json.loads((path / "manifest.json").read_text())
        del m["dataset"]["fingerprint"]
        (path / "manifest.json").write_text(json.dumps(m))
    elif how == "not normalised":
        x = np.load(path / "embeddings.npy")
        x[5] *= 2
        np.save(path / "embeddings.npy", x)
    elif how == "nan":
        x = np.load(path / "embeddings.npy")
        x[7, 0] = np.nan
        np.save(path / "embeddings.npy", x)
    elif how == "pickled object":
        np.save(path / "labels.npy", np.array([{"a": 1}] * 40, dtype=object), allow_pickle=True)


@pytest.mark.parametrize("how, message", [
    ("truncated embeddings", "embeddings.npy: not a readable .npy array"),
    ("missing labels", "labels.npy: missing"),
    ("labels count", "40 embeddings, 39 labels"),
    ("labels dtype", "labels.npy: float32"),
    ("manifest count", "manifest count 41"),
    ("manifest json", "manifest.json: not readable JSON"),
    ("manifest field", "malformed manifest"),
    ("not normalised", "row 5 is not a finite unit vector"),
    ("nan", "row 7 is not a finite unit vector"),
    ("pickled object", "labels.npy: not a readable .npy array"),
])
def test_corrupt_sets_are_refused_with_the_file_named(tmp_path, how, message):
    path = tmp_path / "task1" / "cifar10-test"
    write_random_set(path, "task1")
    corrupt(path, how)
    with pytest.raises(InputError, match=message) as e:
        read_set(path)
    assert str(path) in str(e.value)


def test_mismatched_sets_are_refused(tmp_path):
    a = write_random_set(tmp_path / "a", "a")
    ok = write_random_set(tmp_path / "b", "b", seed=1)
    check_comparable([a, ok], [a, ok])
    check_comparable([a], [write_random_set(tmp_path / "g", "g", n=30, fingerprint="e" * 64)])  # other gallery data
    cases = {
        "dimension 16": write_random_set(tmp_path / "c", "c", dim=16),
        "preprocessing": write_random_set(tmp_path / "d", "d", preprocessing=Preprocessing(resize=40, crop=32)),
        "other query data": write_random_set(tmp_path / "e", "e", fingerprint="e" * 64),
        "other query data ": write_random_set(tmp_path / "f", "f", labels=np.arange(40)[::-1] % 4),
    }
    for message, other in cases.items():
        with pytest.raises(InputError, match=message.strip()):
            check_comparable([a, other], [a, other])


def test_model_id_must_be_a_folder_name(tmp_path):
    with pytest.raises(InputError, match="model id '../x'"):
        set_path(tmp_path, "../x", "cifar10-test")
