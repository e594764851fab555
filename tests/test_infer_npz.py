"""npz:PATH[:split] data sets in the MedMNIST layout: grey and RGB, label shapes, refusals."""
import json

import numpy as np
import pytest

from dpcompat.common.errors import InputError
from dpcompat.infer.data.datasets import dataset_key, open_dataset


def write_npz(path, *, rgb=True, size=28, n=6, column_labels=True, **extra):
    rng = np.random.default_rng(0)
    arrays = {}
    for i, split in enumerate(("train", "val", "test")):
        shape = (n + i, size, size, 3) if rgb else (n + i, size, size)
        labels = np.arange(n + i) % 3
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = labels[:, None] if column_labels else labels
    arrays.update(extra)
    np.savez(path, **arrays)
    return arrays


@pytest.mark.parametrize("rgb", [True, False])
def test_grey_and_rgb_splits(tmp_path, rgb):
    arrays = write_npz(tmp_path / "blood.npz", rgb=rgb, size=20)
    for split, n in (("train", 6), ("val", 7), ("test", 8)):
        ds = open_dataset(f"npz:{tmp_path / 'blood.npz'}:{split}")
        assert (ds.name, ds.split, len(ds)) == ("npz", split, n)
        assert np.array_equal(ds.labels, arrays[f"{split}_labels"][:, 0]) and ds.labels.dtype == np.int64
        img = ds.image(2)
        assert img.mode == "RGB" and img.size == (20, 20)
        pixels = np.asarray(img)
        stored = arrays[f"{split}_images"][2]
        expected = stored if rgb else np.repeat(stored[..., None], 3, axis=2)
        assert np.array_equal(pixels, expected)
        assert ds.stored_bytes(2) == stored.tobytes()
    assert ds.classes == ["0", "1", "2"]


def test_default_split_key_and_flat_labels(tmp_path):
    write_npz(tmp_path / "bloodmnist.npz", column_labels=False)
    ds = open_dataset(f"npz:{tmp_path / 'bloodmnist.npz'}")
    assert ds.split == "test" and len(ds) == 8
    assert dataset_key(f"npz:{tmp_path / 'bloodmnist.npz'}").startswith("npz-bloodmnist-test-")
    assert dataset_key(f"npz:{tmp_path / 'bloodmnist.npz'}:val").startswith("npz-bloodmnist-val-")
    assert ds.location == f"npz:test:{(tmp_path / 'bloodmnist.npz').resolve()}"


def test_fingerprint_follows_content(tmp_path):
    write_npz(tmp_path / "a.npz")
    write_npz(tmp_path / "b.npz")
    arrays = write_npz(tmp_path / "c.npz")
    arrays["test_images"][0, 0, 0, 0] ^= 1
    np.savez(tmp_path / "c.npz", **arrays)
    prints = [open_dataset(f"npz:{tmp_path / f}.npz").fingerprint for f in "abc"]
    assert prints[0] == prints[1] != prints[2]


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b"not a zip"), "not a readable .npz"),
    (lambda p: np.savez(p, images=np.zeros((2, 4, 4), np.uint8)), "no test_images / test_labels"),
    (lambda p: np.savez(p, test_images=np.zeros((2, 4, 4), np.float32), test_labels=np.zeros(2, int)),
     "expected uint8"),
    (lambda p: np.savez(p, test_images=np.zeros((2, 4, 4, 2), np.uint8), test_labels=np.zeros(2, int)),
     "expected uint8"),
    (lambda p: np.savez(p, test_images=np.zeros((2, 4, 4), np.uint8), test_labels=np.zeros(3, int)),
     "2 test_images but 3 test_labels"),
    (lambda p: np.savez(p, test_images=np.zeros((2, 4, 4), np.uint8), test_labels=np.zeros((2, 2), int)),
     "expected integers"),
    (lambda p: np.savez(p, test_images=np.zeros((2, 4, 4), np.uint8), test_labels=np.array([0, -1])),
     "negative labels"),
    (lambda p: np.savez(p, test_images=np.array([object()] * 2, dtype=object), test_labels=np.zeros(2, int)),
     "refused"),
])
def test_bad_files_are_input_errors(tmp_path, make, message):
    path = tmp_path / "bad.npz"
    make(path)
    with pytest.raises(InputError, match=message):
        open_dataset(f"npz:{path}")


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="is not a file"):
        open_dataset(f"npz:{tmp_path / 'none.npz'}:train")


def test_evaluate_on_an_npz_query_end_to_end(tmp_path):
    from onnx_fixtures import run_cli, write_model

    write_npz(tmp_path / "blood.npz", rgb=False, size=28, n=20)
    for task in (1, 2):
        write_model(tmp_path / "exports" / f"task{task}.onnx", task=task, dim=8)
    r = run_cli("evaluate", "--exports-dir", "exports", "--query", "npz:blood.npz:test", "--gallery",
                "npz:blood.npz:train", "--provider", "cpu", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "reports" / "compatibility.json").read_text())
    assert (report["query"]["spec"], report["query"]["count"], report["gallery"]["count"]) == ("npz:blood.npz:test", 22, 20)
    key = dataset_key(f"npz:{tmp_path / 'blood.npz'}:test")
    assert key.startswith("npz-blood-test-") and (tmp_path / "embeddings" / "task1" / key / "manifest.json").is_file()
