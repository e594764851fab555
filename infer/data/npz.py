"""``npz:PATH[:split]`` data sets in the MedMNIST layout, read without pickle.

One ``.npz`` file holds ``<split>_images`` (uint8 [N, H, W] grey or [N, H, W, 3] RGB, any size; [N, H,
W, 1] is grey too) and ``<split>_labels`` (integers [N] or [N, 1]) for the splits ``train``, ``val``
and ``test``. The split defaults to ``test``. The file is opened with ``allow_pickle=False``, so an
object array (the only way a ``.npz`` can carry code) is refused, not run.
"""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from ...common.errors import InputError
from .base import Dataset

NPZ_SPLITS = ("train", "val", "test")
DEFAULT_SPLIT = "test"


def parse_npz_spec(rest: str) -> tuple[Path, str]:
    """``PATH[:split]`` (the part after ``npz:``) -> (path, split); the split defaults to ``test``."""
    path, sep, split = rest.rpartition(":")
    if sep and split in NPZ_SPLITS and path:
        return Path(path), split
    return Path(rest), DEFAULT_SPLIT


def _read_split(spec: str, path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise InputError(f"{spec}: {path} is not a file")
    if not zipfile.is_zipfile(path):  # np.load would take it for a .npy or a pickle
        raise InputError(f"{path}: not a readable .npz file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            wanted = (f"{split}_images", f"{split}_labels")
            if not set(wanted) <= keys:
                raise InputError(f"{path}: no {' / '.join(wanted)} arrays (it holds {', '.join(sorted(keys)) or 'none'};"
                                 f" expected the MedMNIST layout <split>_images, <split>_labels)")
            return npz[wanted[0]], npz[wanted[1]]
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise InputError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
    except ValueError as e:  # object arrays need pickle, which is refused
        raise InputError(f"{path}: refused ({e}); only plain numeric arrays are read") from None


def _checked(path: Path, split: str, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 [N, H, W] or [N, H, W, 3] and labels as int64 [N], or InputError saying why not."""
    name = f"{path}: {split}_images"
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
        raise InputError(f"{name} is {images.dtype} {list(images.shape)}, expected uint8 [N, H, W] or [N, H, W, 3]")
    if 0 in images.shape:
        raise InputError(f"{name} is empty ({list(images.shape)})")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{path}: {split}_labels is {labels.dtype} {list(labels.shape)}, expected integers [N] or [N, 1]")
    if len(labels) != len(images):
        raise InputError(f"{path}: {len(images)} {split}_images but {len(labels)} {split}_labels")
    if labels.min() < 0:
        raise InputError(f"{path}: {split}_labels has negative labels (min {labels.min()})")
    return np.ascontiguousarray(images), labels.astype(np.int64)


class NpzDataset(Dataset):
    """One split of a MedMNIST-layout ``.npz`` file; classes are named by their label numbers."""

    def __init__(self, spec: str, path: Path, split: str):
        self.spec, self.name, self.split, self.path = spec, "npz", split, path
        self.location = f"npz:{split}:{path.resolve()}"
        self.images, self.labels = _checked(path, split, *_read_split(spec, path, split))
        self.classes = [str(c) for c in range(int(self.labels.max()) + 1)]

    def image(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index]).convert("RGB")

    def item_name(self, index: int) -> str:
        return f"{self.spec}[{index}]"

    def stored_bytes(self, index: int) -> bytes:
        return self.images[index].tobytes()

    def _fingerprint(self) -> str:
        h = hashlib.sha256(f"npz {self.images.shape} {self.labels.shape}\n".encode())
        h.update(self.images.tobytes())
        h.update(self.labels.astype("<i8").tobytes())
        return h.hexdigest()
