"""Data set specs, CIFAR without torchvision (restricted unpickler), folders, fingerprints."""
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from dpcompat.infer.data.datasets import dataset_key, dataset_location, open_dataset
from dpcompat.common.errors import InputError
from onnx_fixtures import write_data


def test_cifar_spec_reads_the_python_layout(tmp_path):
    write_data(tmp_path, "cifar10", test_per_class=3)
    ds = open_dataset("cifar10:test", tmp_path)
    assert (ds.name, ds.split, len(ds)) == ("cifar10", "test", 30) and ds.key.startswith("cifar10-test-")
    assert ds.labels.dtype == np.int64 and ds.classes[0] == "class0"
    img = ds.image(4)
    assert img.mode == "RGB" and img.size == (32, 32)
    assert ds.item_name(4) == "cifar10:test[4]"
    write_data(tmp_path, "cifar100", test_per_class=1, classes=100)
    assert len(open_dataset("cifar100:test", tmp_path)) == 100


def test_fingerprint_covers_exact_images_and_labels(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for root in (a, b, c):
        write_data(root, test_per_class=2)
    assert open_dataset("cifar10:test", a).fingerprint == open_dataset("cifar10:test", b).fingerprint
    from dpcompat.common.cifar import load_cifar, write_cifar
    data = load_cifar(c, "cifar10", "test")
    images, labels = data.images.copy(), data.labels.copy()
    images[3, 0, 0, 0] ^= 1
    write_cifar(c, "cifar10", {"test": (images, labels)}, data.classes)
    changed_pixel = open_dataset("cifar10:test", c).fingerprint
    labels[[0, 1]] = labels[[1, 0]]
    write_cifar(c, "cifar10", {"test": (images, labels)}, data.classes)
    changed_labels = open_dataset("cifar10:test", c).fingerprint
    assert len({open_dataset("cifar10:test", a).fingerprint, changed_pixel, changed_labels}) == 3


def test_malicious_pickle_runs_no_code(tmp_path):
    write_data(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": [0]}, f)
    with pytest.raises(InputError, match="test_batch: not a readable CIFAR batch"):
        open_dataset("cifar10:test", tmp_path)
    assert not marker.exists()


def write_folder(root, bad=False):
    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, ext in enumerate(["png", "jpg", "webp"]):
            Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)).save(root / name / f"{i}.{ext}")
    (root / "dog" / "notes.txt").write_text("not an image")
    if bad:
        (root / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return root


def test_folder_dataset(tmp_path):
    ds = open_dataset(f"folder:{write_folder(tmp_path / 'pets')}")
    assert ds.classes == ["cat", "dog"] and ds.key.startswith("folder-pets-")
    assert len(ds) == 6 and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert [ds.item_name(i) for i in range(3)] == ["cat/0.png", "cat/1.jpg", "cat/2.webp"]
    assert all(ds.image(i).mode == "RGB" for i in range(6))
    before = ds.fingerprint
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "pets" / "dog" / "0.png")
    assert open_dataset(f"folder:{tmp_path / 'pets'}").fingerprint != before


def test_unreadable_image_is_named(tmp_path):
    ds = open_dataset(f"folder:{write_folder(tmp_path / 'pets', bad=True)}")
    bad = [ds.item_name(i) for i in range(len(ds))].index("cat/broken.png")
    with pytest.raises(InputError, match=r"broken.png: unreadable image"):
        ds.image(bad)


@pytest.mark.parametrize("spec, message", [
    ("cifar10", "expected cifar10:train|test"),
    ("cifar10:val", "unknown split 'val'"),
    ("imagenet:val", "unknown kind 'imagenet'"),
    ("folder:", "expected cifar10:train|test"),
])
def test_bad_specs(spec, message):
    with pytest.raises(InputError, match=message):
        dataset_key(spec)


def test_missing_data_is_named(tmp_path):
    with pytest.raises(InputError, match="cifar-10-batches-py/test_batch"):
        open_dataset("cifar10:test", tmp_path)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(InputError, match="no jpg/jpeg/png/webp images"):
        open_dataset(f"folder:{tmp_path / 'empty'}")
    with pytest.raises(InputError, match="no jpg/jpeg/png/webp images"):  # no class sub-folder and no image
        open_dataset(f"folder:{tmp_path / 'empty' / 'cls'}")


def test_location_and_key_name_the_data_not_its_folder_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a" / "images").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "images").symlink_to(tmp_path / "a" / "images")
    assert dataset_location("folder:a/images") == f"folder:{tmp_path.resolve() / 'a' / 'images'}"
    assert dataset_key("folder:a/images") == dataset_key(f"folder:{tmp_path}/b/images")  # the same folder
    assert dataset_key("folder:a/images") != dataset_key("folder:b")
    assert dataset_key("cifar10:test", "x") != dataset_key("cifar10:test", "y")  # two --data-path
    assert dataset_key("cifar10:test", "x") != dataset_key("cifar10:train", "x")
    assert dataset_location("cifar10:test", "x") == f"cifar10:test:{tmp_path.resolve() / 'x' / 'cifar-10-batches-py'}"


def test_generated_spec():
    ds = open_dataset("generated:25")
    assert (len(ds), ds.location, ds.labels[:12].tolist()) == (25, "generated:25", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1])
    images = [np.asarray(ds.image(i)) for i in range(25)]
    assert images[3].shape == (8, 8, 3) and images[3].dtype == np.uint8
    assert len({im.tobytes() for im in images}) == 25 and np.array_equal(np.asarray(ds.image(3)), images[3])
    assert ds.fingerprint == open_dataset("generated:25").fingerprint != open_dataset("generated:26").fingerprint
    for bad in ("generated:0", "generated:x", "generated:10000000000"):
        with pytest.raises(InputError, match="expected generated:N"):
            open_dataset(bad)
