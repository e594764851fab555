"""Image sets named on the command line, read without torchvision.

Specs:
  ``cifar10:train``, ``cifar10:test``, ``cifar100:train``, ``cifar100:test``
      CIFAR's python layout under ``--data-path`` (see :mod:`infer.cifar`).
  ``folder:PATH``
      one sub-folder per class (sorted names -> labels 0, 1, ...), images below it; or a flat folder
      of images, unlabelled. ``images:PATH``: every image below PATH, unlabelled, any layout.
      ``list:FILE``: the image files a text or CSV file lists, with or without labels. See
      :mod:`infer.data.files` for the exact rules, the order and the fingerprint.
  ``npz:PATH[:split]``
      a MedMNIST-layout ``.npz`` file, split train, val or test (default); see :mod:`infer.data.npz`.
  ``generated:N``
      N generated 8x8 RGB images (a pure function of the index, no files) in 10 classes
      (label = index mod 10), N up to MAX_GENERATED: for benchmarks and tests of the embedding loop.

A data set's ``location`` is its spec resolved to an absolute place (the folder or list file, or
CIFAR's folder under ``--data-path``); the store names a set by it, never by a name two data sets
can share.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
from PIL import Image

from ...common.cifar import cifar_dir, load_cifar
from ...common.errors import InputError
from .base import CIFAR_KINDS as _CIFAR, FILE_KINDS, Dataset, location_key
from .files import folder_dataset, images_dataset, list_dataset
from .npz import NpzDataset, parse_npz_spec

_SPLITS = ("train", "test")
MAX_GENERATED = 10**7  # the labels (8 bytes per item) and batch ranges are held in memory: about 100 MB
_GENERATED_SIZE, _GENERATED_CLASSES = 8, 10


class CifarDataset(Dataset):
    def __init__(self, spec: str, name: str, split: str, data_path: str | Path):
        self.spec, self.name, self.split = spec, name, split
        self.location = dataset_location(spec, data_path)
        data = load_cifar(data_path, name, split)
        self.images, self.labels, self.classes = data.images, data.labels, data.classes

    def image(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index])

    def item_name(self, index: int) -> str:
        return f"{self.spec}[{index}]"

    def _fingerprint(self) -> str:
        h = hashlib.sha256(f"cifar {self.images.shape} {self.labels.shape}\n".encode())
        h.update(self.images.tobytes())
        h.update(self.labels.astype("<i8").tobytes())
        return h.hexdigest()


class GeneratedDataset(Dataset):
    def __init__(self, spec: str, count: int):
        self.spec, self.name, self.split, self.location = spec, "generated", str(count), f"generated:{count}"
        self.labels = np.arange(count, dtype=np.int64) % _GENERATED_CLASSES
        self.classes = [f"generated_{c}" for c in range(_GENERATED_CLASSES)]
        self._pixels = np.arange(_GENERATED_SIZE * _GENERATED_SIZE * 3, dtype=np.uint64)

    def image(self, index: int) -> Image.Image:
        # A multiplicative hash of (index, pixel): cheap, deterministic, different for every index.
        x = (self._pixels + np.uint64(index) * np.uint64(193)) * np.uint64(2654435761) >> np.uint64(11)
        return Image.fromarray((x & np.uint64(255)).astype(np.uint8).reshape(_GENERATED_SIZE, _GENERATED_SIZE, 3))

    def item_name(self, index: int) -> str:
        return f"{self.spec}[{index}]"

    def _fingerprint(self) -> str:
        # The images are a pure function of the index: the generator's definition is the content.
        return hashlib.sha256(f"generated v1 {len(self)} {_GENERATED_SIZE} {_GENERATED_CLASSES}\n".encode()).hexdigest()


def _parse(spec: str) -> tuple[str, str]:
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise InputError(f"dataset {spec!r}: expected cifar10:train|test, cifar100:train|test, folder:PATH, "
                         "images:PATH, list:FILE, npz:PATH[:train|val|test] or generated:N")
    if kind in _CIFAR:
        if rest not in _SPLITS:
            raise InputError(f"dataset {spec!r}: unknown split {rest!r}, expected train or test")
    elif kind == "generated":
        if not rest.isdigit() or not 1 <= int(rest) <= MAX_GENERATED:
            raise InputError(f"dataset {spec!r}: expected generated:N with N from 1 to {MAX_GENERATED}")
    elif kind not in (*FILE_KINDS, "npz"):
        raise InputError(f"dataset {spec!r}: unknown kind {kind!r}, expected cifar10, cifar100, folder, images, "
                         "list, npz or generated")
    return kind, rest


def dataset_location(spec: str, data_path: str | Path = "data") -> str:
    """Where the data of ``spec`` is, absolute and without symbolic links, from the spec alone
    (``folder:/abs/images``, ``list:/abs/gallery.csv``, ``cifar10:test:/abs/data/cifar-10-batches-py``,
    ``generated:N``)."""
    kind, rest = _parse(spec)
    if kind in FILE_KINDS:
        return f"{kind}:{Path(rest).resolve()}"
    if kind == "generated":
        return f"generated:{int(rest)}"
    if kind == "npz":
        path, split = parse_npz_spec(rest)
        return f"npz:{split}:{path.resolve()}"
    return f"{kind}:{rest}:{cifar_dir(data_path, kind).resolve()}"


def dataset_key(spec: str, data_path: str | Path = "data") -> str:
    """The store folder of a spec (see :func:`location_key`), so stored sets can be found without the data."""
    return location_key(dataset_location(spec, data_path))


def legacy_dataset_key(spec: str) -> str:
    """The folder name store format 1 used, ``<name>-<split>``, which two data sets could share."""
    kind, rest = _parse(spec)
    split = Path(rest).resolve().name if kind == "folder" else rest
    if kind == "npz":
        path, part = parse_npz_spec(rest)
        split = f"{path.stem}-{part}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{kind}-{split}")


def spec_describes(spec: str, location: str) -> bool:
    """Whether ``spec`` can name the data at ``location`` (a resolved location, see
    :func:`dataset_location`), whatever folder it was resolved from: the same kind, the same split
    (CIFAR, npz) or count (generated), the same folder or file name."""
    try:
        kind, rest = _parse(spec)
    except InputError:
        return False
    where_kind, _, where = location.partition(":")
    if kind != where_kind:
        return False
    if kind in _CIFAR:
        return where.partition(":")[0] == rest
    if kind == "generated":
        return where == str(int(rest))
    if kind == "npz":
        path, split = parse_npz_spec(rest)
        where_split, _, where_path = where.partition(":")
        return where_split == split and Path(where_path).name == path.name
    name = Path(rest).name
    return not name or Path(where).name == name


def open_dataset(spec: str, data_path: str | Path = "data") -> Dataset:
    """The data set named by ``spec`` (see the module doc); ``data_path`` holds CIFAR's folders."""
    kind, rest = _parse(spec)
    opener = {"folder": folder_dataset, "images": images_dataset, "list": list_dataset}.get(kind)
    if opener is not None:
        return opener(spec, Path(rest), dataset_location(spec))
    if kind == "npz":
        return NpzDataset(spec, *parse_npz_spec(rest))
    if kind == "generated":
        return GeneratedDataset(spec, int(rest))
    return CifarDataset(spec, kind, rest, data_path)
