"""What every data set is: images addressed by index, with int64 labels or none (unlabelled data), a
resolved location, and the store folder that location names."""
from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from functools import cached_property
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

CIFAR_KINDS = ("cifar10", "cifar100")
FILE_KINDS = ("folder", "images", "list")  # specs naming image files: their location is a path


class Dataset(ABC):
    """Images addressed by index, with int64 labels or none.

    Attributes: ``spec`` (as given), ``name`` ('cifar10', 'cifar100', 'folder', 'images', 'list',
    'npz', 'generated'), ``split``, ``location`` (see the module doc), ``key`` (its store folder name),
    ``labels`` int64 [N], or None for unlabelled data (no label is ever made up for it), ``classes``.
    """

    spec: str
    name: str
    split: str
    location: str
    labels: Optional[np.ndarray]
    classes: list[str]

    @property
    def key(self) -> str:
        return location_key(self.location)

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def __len__(self) -> int:
        return len(self.labels)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over the exact stored bytes of every image and every label, in order."""
        return self._fingerprint()

    def unreadable_items(self) -> tuple[tuple[str, str], ...]:
        """(item name, reason) of the items known, before any decoding, not to be readable images (found
        while fingerprinting files); none for data held in memory."""
        return ()

    def labels_without(self, skipped: tuple[str, ...]) -> Optional[np.ndarray]:
        """int64 [N - len(skipped)]: the labels of every item but those named in ``skipped``; None when
        the data has no labels."""
        if not skipped or not self.labelled:
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
        readable = Path(rest).name if kind in FILE_KINDS else rest
    digest = hashlib.sha256(location.encode()).hexdigest()[:16]
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{kind}-{readable}"[:80]) + f"-{digest}"
