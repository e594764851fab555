"""What every data set is: images with int64 labels addressed by index, a resolved location, and
the store folder that location names."""
from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR_KINDS = ("cifar10", "cifar100")


class Dataset(ABC):
    """Images with int64 labels, addressed by index.

    Attributes: ``spec`` (as given), ``name`` ('cifar10', 'cifar100', 'folder', 'generated'),
    ``split``, ``location`` (see the module doc), ``key`` (its store folder name), ``labels`` int64
    [N], ``classes``.
    """

    spec: str
    name: str
    split: str
    location: str
    labels: np.ndarray
    classes: list[str]

    @property
    def key(self) -> str:
        return location_key(self.location)

    def __len__(self) -> int:
        return len(self.labels)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over the exact stored bytes of every image and every label, in order."""
        return self._fingerprint()

    def labels_without(self, skipped: tuple[str, ...]) -> np.ndarray:
        """int64 [N - len(skipped)]: the labels of every item but those named in ``skipped``."""
        if not skipped:
            return self.labels
        left_out = set(skipped)
        return self.labels[[i for i in range(len(self)) if self.item_name(i) not in left_out]]

    @abstractmethod
    def image(self, index: int) -> Image.Image:
        """The RGB image at ``index``; InputError naming it when it cannot be decoded."""

    @abstractmethod
    def item_name(self, index: int) -> str:
        """How messages and manifests name the item at ``index``."""

    @abstractmethod
    def _fingerprint(self) -> str:
        ...

    def stored_bytes(self, index: int) -> bytes:
        """The item's bytes as stored; here its decoded RGB pixels (sets stored as RGB pixel arrays)."""
        return np.asarray(self.image(index)).tobytes()


def location_key(location: str) -> str:
    """The store folder of a data location: readable ``<kind>-<split or folder name>`` plus 16 hex
    digits of the location's sha256, so two data sets never share a folder."""
    kind, _, rest = location.partition(":")
    if kind in CIFAR_KINDS:
        readable = rest.partition(":")[0]
    elif kind == "npz":
        split, _, path = rest.partition(":")
        readable = f"{Path(path).stem}-{split}"
    else:
        readable = Path(rest).name if kind == "folder" else rest
    digest = hashlib.sha256(location.encode()).hexdigest()[:16]
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{kind}-{readable}"[:80]) + f"-{digest}"
