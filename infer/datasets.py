"""Labelled image sets named on the command line, read without torchvision.

Specs:
  ``cifar10:train``, ``cifar10:test``, ``cifar100:train``, ``cifar100:test``
      CIFAR's python layout under ``--data-path`` (see :mod:`infer.cifar`).
  ``folder:PATH``
      one sub-folder per class (sorted names -> labels 0, 1, ...), images below it (jpg, jpeg, png,
      webp, any letter case, sub-folders included), in sorted path order. PATH is relative to the
      working directory.
"""
from __future__ import annotations

import hashlib
import re
import warnings
from abc import ABC, abstractmethod
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from ..common.cifar import load_cifar
from ..common.contract import MAX_IMAGE_PIXELS
from ..common.errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
_CIFAR = ("cifar10", "cifar100")
_SPLITS = ("train", "test")


class Dataset(ABC):
    """Images with int64 labels, addressed by index.

    Attributes: ``spec`` (as given), ``name`` ('cifar10', 'cifar100', 'folder'), ``split``, ``key``
    (store folder name ``<name>-<split>``), ``labels`` int64 [N], ``classes``.
    """

    spec: str
    name: str
    split: str
    labels: np.ndarray
    classes: list[str]

    @property
    def key(self) -> str:
        return dataset_key(self.spec)

    def __len__(self) -> int:
        return len(self.labels)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over the exact stored bytes of every image and every label, in order."""
        return self._fingerprint()

    @abstractmethod
    def image(self, index: int) -> Image.Image:
        """The RGB image at ``index``; InputError naming it when it cannot be decoded."""

    @abstractmethod
    def item_name(self, index: int) -> str:
        """How messages and manifests name the item at ``index``."""

    @abstractmethod
    def _fingerprint(self) -> str:
        ...


class CifarDataset(Dataset):
    def __init__(self, spec: str, name: str, split: str, data_path: str | Path):
        self.spec, self.name, self.split = spec, name, split
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


def image_files(folder: Path) -> list[Path]:
    """Every jpg/jpeg/png/webp below ``folder``, sorted, hidden files and folders left out."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def open_image(path: Path) -> Image.Image:
    """The RGB image in ``path``; InputError naming the file when it cannot be decoded or its size
    (width x height, read from the header before decoding) exceeds the contract's MAX_IMAGE_PIXELS."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # Pillow's own, larger guard
            with Image.open(path) as img:
                width, height = img.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise InputError(f"{path}: {width} x {height} pixels, above the limit of {MAX_IMAGE_PIXELS:,}")
                return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None


class FolderDataset(Dataset):
    def __init__(self, spec: str, root: Path):
        if not root.is_dir():
            raise InputError(f"{spec}: {root} is not a folder")
        self.spec, self.name, self.split, self.root = spec, "folder", root.resolve().name, root
        self.classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not self.classes:
            raise InputError(f"{spec}: {root} has no class sub-folders (expected one folder per class)")
        files, labels = [], []
        for label, name in enumerate(self.classes):
            found = image_files(root / name)
            files.extend(found)
            labels.extend([label] * len(found))
        if not files:
            raise InputError(f"{spec}: no {'/'.join(s[1:] for s in IMAGE_SUFFIXES)} images under {root}")
        self.files = files
        self.labels = np.asarray(labels, dtype=np.int64)

    def image(self, index: int) -> Image.Image:
        return open_image(self.files[index])

    def item_name(self, index: int) -> str:
        return self.files[index].relative_to(self.root).as_posix()

    def _fingerprint(self) -> str:
        h = hashlib.sha256(f"folder {len(self.files)}\n".encode())
        for path, label in zip(self.files, self.labels):
            try:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError as e:
                raise InputError(f"{path}: cannot read ({e.strerror})") from None
            h.update(f"{path.relative_to(self.root).as_posix()}\t{label}\t{digest}\n".encode())
        return h.hexdigest()


def _parse(spec: str) -> tuple[str, str]:
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise InputError(f"dataset {spec!r}: expected cifar10:train|test, cifar100:train|test or folder:PATH")
    if kind in _CIFAR:
        if rest not in _SPLITS:
            raise InputError(f"dataset {spec!r}: unknown split {rest!r}, expected train or test")
    elif kind != "folder":
        raise InputError(f"dataset {spec!r}: unknown kind {kind!r}, expected cifar10, cifar100 or folder")
    return kind, rest


def dataset_key(spec: str) -> str:
    """The store folder of a spec, ``<name>-<split>`` (``cifar10-test``, ``folder-<folder name>``),
    from the spec alone, so stored sets can be found without the data."""
    kind, rest = _parse(spec)
    split = Path(rest).resolve().name if kind == "folder" else rest
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{kind}-{split}")


def open_dataset(spec: str, data_path: str | Path = "data") -> Dataset:
    """The data set named by ``spec`` (see the module doc); ``data_path`` holds CIFAR's folders."""
    kind, rest = _parse(spec)
    if kind == "folder":
        return FolderDataset(spec, Path(rest))
    return CifarDataset(spec, kind, rest, data_path)
