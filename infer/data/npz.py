"""``npz:PATH[:split]`` data sets in the MedMNIST layout, read without pickle.

One ``.npz`` file holds ``<split>_images`` (uint8 [N, H, W] grey or [N, H, W, 3] RGB, any size; [N, H,
W, 1] is grey too) and ``<split>_labels`` (integers [N] or [N, 1]) for the splits ``train``, ``val``
and ``test``. The split defaults to ``test``. The file is opened with ``allow_pickle=False``, so an
object array (the only way a ``.npz`` can carry code) is refused, not run. What each array's header
declares is checked before it is read: its bytes against what the archive holds and against
MAX_NPZ_ARRAY_BYTES, each image against the contract's MAX_IMAGE_PIXELS; labels are checked for range
as stored, then cast to int64.
"""
from __future__ import annotations

import hashlib
import math
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from ...common.contract import MAX_IMAGE_PIXELS
from ...common.errors import InputError, shown
from .base import Dataset

NPZ_SPLITS = ("train", "val", "test")
MAX_NPZ_ARRAY_BYTES = 16 * 2**30  # one array, read into memory whole (MedMNIST+'s largest split: ~4 GB)
MAX_LABEL = 2**63 - 1  # what the store's int64 labels hold
DEFAULT_SPLIT = "test"


def parse_npz_spec(rest: str) -> tuple[Path, str]:
    """``PATH[:split]`` (the part after ``npz:``) -> (path, split); the split defaults to ``test``."""
    path, sep, split = rest.rpartition(":")
    if sep and split in NPZ_SPLITS and path:
        return Path(path), split
    return Path(rest), DEFAULT_SPLIT


def _declared(zf: zipfile.ZipFile, member: str, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) the .npy header of ``member`` declares, read without its data; InputError unless
    its data bytes are exactly what the zip directory says the member holds (so reading it allocates no
    more than the file really has) and at most MAX_NPZ_ARRAY_BYTES."""
    info = zf.getinfo(member)
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"{member}: .npy format version {version}")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
        header = f.tell()
    if dtype.hasobject:
        raise ValueError(f"{member}: an object array (it needs pickle)")
    size = math.prod(shape) * dtype.itemsize
    if size != info.file_size - header:
        raise InputError(f"{shown(path)}: {member} declares {list(shape)} {dtype} ({size:,} bytes) but holds "
                         f"{info.file_size - header:,} bytes; refused unread")
    if size > MAX_NPZ_ARRAY_BYTES:
        raise InputError(f"{shown(path)}: {member} holds {size:,} bytes, above the limit of {MAX_NPZ_ARRAY_BYTES:,} "
                         "for one array (it is read into memory whole); refused unread")
    return shape, dtype


def _read_split(spec: str, path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The split's images and labels, their declared sizes checked (:func:`_declared`, and every image
    within the contract's MAX_IMAGE_PIXELS) before either is read."""
    if not path.is_file():
        raise InputError(f"{shown(spec)}: {shown(path)} is not a file")
    if not zipfile.is_zipfile(path):  # np.load would take it for a .npy or a pickle
        raise InputError(f"{shown(path)}: not a readable .npz file (not a zip archive)")
    wanted = (f"{split}_images", f"{split}_labels")
    try:
        with zipfile.ZipFile(path) as zf:
            keys = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
            if not set(wanted) <= keys:
                raise InputError(f"{shown(path)}: no {' / '.join(wanted)} arrays (it holds "
                                 f"{', '.join(sorted(keys))[:300] or 'none'}; expected the MedMNIST layout "
                                 "<split>_images, <split>_labels)")
            shape, _ = _declared(zf, f"{wanted[0]}.npy", path)
            _declared(zf, f"{wanted[1]}.npy", path)
        if len(shape) >= 3 and shape[1] * shape[2] > MAX_IMAGE_PIXELS:
            raise InputError(f"{shown(path)}: {wanted[0]} declares images of {shape[2]} x {shape[1]} pixels, above "
                             f"the limit of {MAX_IMAGE_PIXELS:,}; refused unread")
        with np.load(path, allow_pickle=False) as npz:
            return npz[wanted[0]], npz[wanted[1]]
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as e:
        raise InputError(f"{shown(path)}: not a readable .npz file ({type(e).__name__}: {str(e)[:200]})") from None
    except ValueError as e:  # object arrays need pickle, which is refused
        raise InputError(f"{shown(path)}: refused ({str(e)[:200]}); only plain numeric arrays are read") from None


def _labels(path: Path, split: str, labels: np.ndarray) -> np.ndarray:
    """``labels`` as int64 [N], their range checked on the values as stored (before any cast: uint64
    2^64 - 1 is no label -1)."""
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{shown(path)}: {split}_labels is {labels.dtype} {list(labels.shape)}, expected integers "
                         "[N] or [N, 1]")
    if len(labels) and labels.min() < 0:
        raise InputError(f"{shown(path)}: {split}_labels has negative labels (min {labels.min()})")
    if len(labels) and int(labels.max()) > MAX_LABEL:
        raise InputError(f"{shown(path)}: {split}_labels holds {labels.max()} ({labels.dtype}), above the largest "
                         f"label {MAX_LABEL} (int64)")
    return labels.astype(np.int64)


def _checked(path: Path, split: str, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 [N, H, W] or [N, H, W, 3] and labels as int64 [N], or InputError saying why not."""
    name = f"{shown(path)}: {split}_images"
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
        raise InputError(f"{name} is {images.dtype} {list(images.shape)}, expected uint8 [N, H, W] or [N, H, W, 3]")
    if 0 in images.shape:
        raise InputError(f"{name} is empty ({list(images.shape)})")
    labels = _labels(path, split, labels)
    if len(labels) != len(images):
        raise InputError(f"{shown(path)}: {len(images)} {split}_images but {len(labels)} {split}_labels")
    return np.ascontiguousarray(images), labels


class NpzDataset(Dataset):
    """One split of a MedMNIST-layout ``.npz`` file; classes are named by their label numbers."""

    def __init__(self, spec: str, path: Path, split: str):
        self.spec, self.name, self.split, self.path = spec, "npz", split, path
        self.location = f"npz:{split}:{path.resolve()}"
        self.images, self.labels = _checked(path, split, *_read_split(spec, path, split))
        self.classes = [str(c) for c in np.unique(self.labels)]  # those present: a label of 10^12 is one class

    def image(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index]).convert("RGB")

    def item_name(self, index: int) -> str:
        return f"{self.spec}[{index}]"

    def stored_bytes(self, index: int) -> bytes:
        return self.images[index].tobytes()

    def _fingerprint(self) -> str:
        h = hashlib.sha256(f"npz {self.images.shape} {self.labels.shape}\n".encode())
        h.update(self.images)  # C-contiguous: hashed in place, not copied
        h.update(self.labels.astype("<i8").tobytes())
        return h.hexdigest()
