"""CIFAR-10/100 in their python on-disk layout, read without torchvision and without running pickled code.

Layout (as distributed by the dataset's authors):
  cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
  cifar-100-python/{train, test, meta}
Each batch is a pickled dict with ``data`` (uint8 [N, 3072], channel planes R, G, B of 32x32) and
``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100).
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .atomic import atomic_dir
from .errors import InputError
from .provenance import MARKER, read_marker

FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_BATCHES = {
    ("cifar10", "train"): [f"data_batch_{i}" for i in range(1, 6)],
    ("cifar10", "test"): ["test_batch"],
    ("cifar100", "train"): ["train"],
    ("cifar100", "test"): ["test"],
}
_META = {"cifar10": ("batches.meta", "label_names"), "cifar100": ("meta", "fine_label_names")}
_LABEL_KEY = {"cifar10": "labels", "cifar100": "fine_labels"}
MAX_LABEL = 65_535  # labels index the class names in the meta file; anything larger is corrupt

# Everything a CIFAR pickle needs: numpy's array reconstruction and nothing that can run other code.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("copy_reg", "_reconstructor"),
    ("copyreg", "_reconstructor"),
    ("__builtin__", "object"),
    ("builtins", "object"),
    ("_codecs", "encode"),  # how Python 3 writes bytes at pickle protocol 2: str -> bytes, nothing else
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain containers and numpy arrays")


def _load_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise
    except Exception as e:  # any decoding failure means the file is not a CIFAR batch
        raise InputError(f"{path}: not a readable CIFAR batch ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: not a CIFAR batch (a pickled {type(obj).__name__}, expected a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


@dataclass
class CifarSplit:
    """One split: ``images`` uint8 [N, 32, 32, 3] (RGB, HWC), ``labels`` int64 [N], ``classes`` names,
    ``generated``: how the data was generated when it is dpcompat's stand-in, else None."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    generated: Optional[dict] = None  # the folder's generated-data marker (see common.provenance), if any


def cifar_dir(root: str | Path, name: str) -> Path:
    if name not in FOLDERS:
        raise InputError(f"unknown dataset {name!r}: expected one of {', '.join(FOLDERS)}")
    return Path(root) / FOLDERS[name]


def load_cifar(root: str | Path, name: str, split: str) -> CifarSplit:
    """Read ``name`` ('cifar10' or 'cifar100'), ``split`` ('train' or 'test') from ``root``."""
    if (name, split) not in _BATCHES:
        raise InputError(f"unknown split {name}:{split}: expected train or test")
    folder = cifar_dir(root, name)
    paths = [folder / b for b in _BATCHES[name, split]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"{name} {split} split not found: looked for {', '.join(missing)} (pass --download to "
                         f"fetch it, or --data-path to point at the folder holding {FOLDERS[name]}/)")
    images, labels = [], []
    for p in paths:
        batch = _load_pickle(p)
        data, lab = batch.get("data"), batch.get(_LABEL_KEY[name])
        if not isinstance(data, np.ndarray) or lab is None:
            raise InputError(f"{p}: missing 'data' or '{_LABEL_KEY[name]}'")
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise InputError(f"{p}: 'data' is {data.dtype} {data.shape}, expected uint8 [N, 3072]")
        lab = _labels(lab, p)
        if lab.shape != (data.shape[0],):
            raise InputError(f"{p}: {lab.shape[0]} labels for {data.shape[0]} images")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(lab)
    classes = _load_classes(folder, name)
    labels = np.concatenate(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise InputError(f"{folder}: labels outside 0..{len(classes) - 1}")
    return CifarSplit(np.ascontiguousarray(np.concatenate(images)), labels, classes, read_marker(folder))


def _labels(value: object, path: Path) -> np.ndarray:
    """int64 [N] from a batch's label list (or integer array) of small non-negative integers."""
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "iu":
        items = value.tolist()
    elif isinstance(value, list):
        items = value
    else:
        raise InputError(f"{path}: labels are a {type(value).__name__}, expected a list of integers")
    for x in items:
        if not isinstance(x, int) or isinstance(x, bool) or not 0 <= x <= MAX_LABEL:
            raise InputError(f"{path}: label {str(x)[:40]!r} is not an integer from 0 to {MAX_LABEL}")
    return np.asarray(items, dtype=np.int64).reshape(len(items))


def _load_classes(folder: Path, name: str) -> list[str]:
    meta_file, key = _META[name]
    path = folder / meta_file
    if not path.is_file():
        raise InputError(f"{name} class names not found: looked for {path}")
    names = _load_pickle(path).get(key)
    if not isinstance(names, list):
        raise InputError(f"{path}: missing '{key}'")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def write_cifar(root: str | Path, name: str, splits: dict[str, tuple[np.ndarray, np.ndarray]],
                classes: list[str]) -> Path:
    """Write images (uint8 [N, 32, 32, 3]) and labels in the dataset's own on-disk layout.

    ``splits`` maps 'train'/'test' to (images, labels). Keys and names are stored as bytes, as in the
    original files, so the reader is exercised on the same structure.
    """
    folder = cifar_dir(root, name)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).unlink(missing_ok=True)  # what was generated here before is replaced
    for split, (images, labels) in splits.items():
        files = _BATCHES[name, split]
        data = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), 3072).astype(np.uint8)
        for i, (d, lab) in enumerate(zip(np.array_split(data, len(files)), np.array_split(labels, len(files)))):
            batch = {b"batch_label": f"{split} batch {i + 1}".encode(), b"data": d,
                     _LABEL_KEY[name].encode(): [int(x) for x in lab],
                     b"filenames": [f"{split}_{i}_{j}.png".encode() for j in range(len(d))]}
            with open(folder / files[i], "wb") as f:
                pickle.dump(batch, f, protocol=4)
    meta_file, key = _META[name]
    with open(folder / meta_file, "wb") as f:
        pickle.dump({key.encode(): [c.encode() for c in classes]}, f, protocol=4)
    return folder


# The dataset authors' tarballs and their md5 sums (the same that torchvision checks).
_TARBALLS = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
}


def download_cifar(root: str | Path, name: str) -> Path:
    """Fetch ``name`` into ``root`` unless its folder is there: the official tarball over HTTPS (the
    same file and md5 that torchvision uses), extracted without leaving anything half-written."""
    folder = cifar_dir(root, name)
    if folder.is_dir():
        return folder
    url, md5 = _TARBALLS[name]
    return fetch_tarball(url, md5, root, folder.name)


def download_named(root: str | Path, *specs: Optional[str]) -> None:
    """Fetch into ``root`` each CIFAR set that the data set ``specs`` name (``cifar10:test``,
    ``cifar100:train``, ...; None and other kinds are skipped), unless its folder is there."""
    for name in sorted({spec.partition(":")[0] for spec in specs if spec} & set(FOLDERS)):
        download_cifar(root, name)


def fetch_tarball(url: str, md5: str, root: str | Path, folder: str) -> Path:
    """Download ``url`` (a .tar.gz holding ``folder``), check its md5, extract ``folder`` into ``root``."""
    import hashlib
    import shutil
    import tarfile
    import urllib.request

    root = Path(root)
    with atomic_dir(root / folder) as tmp:
        archive = tmp / "download.tar.gz"
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as f:
                shutil.copyfileobj(response, f, 1 << 20)
        except OSError as e:
            raise InputError(f"downloading {url} failed ({e}); fetch it by hand and extract it into {root}") from None
        digest = hashlib.md5(archive.read_bytes()).hexdigest()
        if digest != md5:
            raise InputError(f"{url}: md5 {digest}, expected {md5}; the download is corrupt")
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp / "x", filter="data")  # no member may land outside, no links out
        except tarfile.TarError as e:
            raise InputError(f"{url}: not a usable archive ({type(e).__name__}: {e})") from None
        if not (tmp / "x" / folder).is_dir():
            raise InputError(f"{url}: the archive holds no {folder}/ folder")
        for item in (tmp / "x" / folder).iterdir():
            item.rename(tmp / item.name)
        archive.unlink()
        shutil.rmtree(tmp / "x")
    return root / folder
