"""Data sets of image files: a folder (labelled by class sub-folders, or unlabelled), every image
below a folder, or a list of files.

Specs (PATH and FILE relative to the working directory):

``folder:PATH``
    *labelled* when no image lies directly in PATH: each non-hidden first-level sub-folder is a class
    (sorted names -> labels 0, 1, ...) holding every image below it. *Unlabelled* when images lie
    directly in PATH and no sub-folder holds any (sub-folders without images are ignored): those
    images, no labels. Images both directly in PATH and below a sub-folder are refused (ambiguous):
    name such data ``images:PATH`` or ``list:FILE``.
``images:PATH``
    every image below PATH at any depth, no labels, whatever the layout (a gallery sharded into
    sub-folders: its sub-folders are not classes).
``list:FILE``
    one image path per line (blank lines ignored), or, when FILE's name ends in ``.csv``, a CSV file
    whose header names its columns: ``path`` and optionally ``label`` (nothing else). Surrounding
    spaces are removed; relative paths are relative to FILE's folder. Labels are whole numbers from 0
    to MAX_LABEL, stored as they are, so lists numbered alike agree; class names are refused (a
    numbering made per file could give one class two numbers in a query and a gallery list). Without
    a label column, no labels. A file listed twice is refused. Any file name: Pillow decides.

In folders an image is a .jpg, .jpeg, .png or .webp file (any letter case); hidden files and folders
(name starting with '.') are left out. Order: folders by the path relative to PATH, compared
component by component in code-point order (``a/b.jpg`` before ``a-b/c.jpg``); a list as listed.
Item names: that relative POSIX path; in a list, the path as written.

Nothing is decoded up front: images are opened one at a time when a batch needs them.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from ...common.contract import MAX_IMAGE_FILE_BYTES, MAX_IMAGE_PIXELS
from ...common.digest import file_sha256
from ...common.errors import InputError, shown
from .base import Dataset

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
MAX_LABEL = 2**63 - 1  # what the store's int64 labels hold
LIST_COLUMNS = ("path", "label")
_WHOLE_NUMBER = re.compile(r"^[0-9]+$")


def _visible(path: Path, folder: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(folder).parts)


def image_files(folder: Path) -> list[Path]:
    """Every jpg/jpeg/png/webp file below ``folder`` at any depth, hidden files and folders left out,
    in the module's order (the relative path, component by component)."""
    found = (p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and _visible(p, folder))
    return sorted(found, key=lambda p: p.relative_to(folder).parts)


def open_image(path: Path) -> Image.Image:
    """The RGB image in ``path``; InputError naming the file when it cannot be decoded, is larger than
    the contract's MAX_IMAGE_FILE_BYTES (not read then), or its size (width x height, read from the
    header before decoding) exceeds MAX_IMAGE_PIXELS."""
    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_FILE_BYTES:
            raise InputError(f"{shown(path)}: {size:,} bytes, above the limit of {MAX_IMAGE_FILE_BYTES:,} for an image file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # Pillow's own, larger guard
            with Image.open(path) as img:
                width, height = img.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise InputError(f"{shown(path)}: {width} x {height} pixels, above the limit of {MAX_IMAGE_PIXELS:,}")
                return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"{shown(path)}: unreadable image ({type(e).__name__}: {shown(str(e)[:200])})") from None


def file_digest(path: Path) -> tuple[str, bool]:
    """(what the fingerprint records of ``path``, whether it can be an image). The sha256 of its bytes,
    read in chunks; or, reading at most its header: ``too large`` (above MAX_IMAGE_FILE_BYTES, not
    read), ``not an image`` (Pillow recognises no image format in its header), ``cannot be read``
    (a folder, no permission, a truncated header), ``missing``, ``too many pixels`` (Pillow's
    decompression-bomb limit)."""
    try:
        if path.stat().st_size > MAX_IMAGE_FILE_BYTES:
            return "too large", False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a header is all that is read here; open_image judges the rest
            with Image.open(path):
                pass
    except FileNotFoundError:
        return "missing", False
    except UnidentifiedImageError:
        return "not an image", False
    except Image.DecompressionBombError:
        return "too many pixels", False
    except (OSError, SyntaxError, ValueError):
        return "cannot be read", False
    try:
        return file_sha256(path), True
    except InputError:
        return "cannot be read", False


class FileDataset(Dataset):
    """Images in files, in a fixed order: ``files`` (paths), their item ``names``, ``labels`` int64 [N]
    or None. ``header`` starts the fingerprint (it says what kind of list of items follows)."""

    def __init__(self, spec: str, *, name: str, split: str, location: str, files: Sequence[Path],
                 names: Sequence[str], labels: Optional[np.ndarray], classes: Sequence[str], header: str):
        self.spec, self.name, self.split, self.location = spec, name, split, location
        self.files, self.names, self.labels, self.classes = list(files), list(names), labels, list(classes)
        self._header, self._unreadable = header, ()

    def __len__(self) -> int:
        return len(self.files)

    def image(self, index: int) -> Image.Image:
        return open_image(self.files[index])

    def item_name(self, index: int) -> str:
        return self.names[index]

    def stored_bytes(self, index: int) -> bytes:
        path = self.files[index]
        try:
            if path.stat().st_size > MAX_IMAGE_FILE_BYTES:
                raise InputError(f"{shown(path)}: larger than {MAX_IMAGE_FILE_BYTES:,} bytes, not an image file")
            return path.read_bytes()
        except OSError as e:
            raise InputError(f"{shown(path)}: cannot read ({e.strerror})") from None

    def unreadable_items(self) -> tuple[tuple[str, str], ...]:
        _ = self.fingerprint  # computing it finds them
        return self._unreadable

    def _fingerprint(self) -> str:
        """sha256 over ``header`` and one line per item: name, label ('-': none), :func:`file_digest`.
        A labelled folder's lines are those of store format 2's folders, so its sets stay matched."""
        h = hashlib.sha256(self._header.encode())
        unreadable = []
        for i, path in enumerate(self.files):
            digest, readable = file_digest(path)
            if not readable:
                unreadable.append((self.names[i], digest))
            label = "-" if self.labels is None else int(self.labels[i])
            h.update(f"{self.names[i]}\t{label}\t{digest}\n".encode())
        self._unreadable = tuple(unreadable)
        return h.hexdigest()


def _no_images(spec: str, root: Path) -> InputError:
    return InputError(f"{spec}: no {'/'.join(s[1:] for s in IMAGE_SUFFIXES)} images under {root}")


def folder_dataset(spec: str, root: Path, location: str) -> FileDataset:
    """``folder:PATH`` (see the module doc): labelled by class sub-folders, or flat and unlabelled."""
    if not root.is_dir():
        raise InputError(f"{spec}: {root} is not a folder")
    split = root.resolve().name
    top = sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                 and not p.name.startswith("."))
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    per_class = [image_files(root / c) for c in classes]
    below = sum(map(len, per_class))
    if top and below:
        raise InputError(f"{spec}: {len(top)} image(s) directly in {root} and {below} in its sub-folders: a labelled "
                         "folder has images only in its class sub-folders, an unlabelled one only directly in it; "
                         f"name every image below it, without labels, as images:{root}, or list them in a "
                         "list:FILE")
    if top:
        return FileDataset(spec, name="folder", split=split, location=location, files=[root / n for n in top],
                           names=top, labels=None, classes=[], header=f"folder {len(top)} unlabelled\n")
    if not below:
        raise _no_images(spec, root)
    files = [f for found in per_class for f in found]
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), [len(found) for found in per_class])
    return FileDataset(spec, name="folder", split=split, location=location, files=files,
                       names=[f.relative_to(root).as_posix() for f in files], labels=labels, classes=classes,
                       header=f"folder {len(files)}\n")


def images_dataset(spec: str, root: Path, location: str) -> FileDataset:
    """``images:PATH``: every image below PATH, no labels."""
    if not root.is_dir():
        raise InputError(f"{spec}: {root} is not a folder")
    files = image_files(root)
    if not files:
        raise _no_images(spec, root)
    return FileDataset(spec, name="images", split=root.resolve().name, location=location, files=files,
                       names=[f.relative_to(root).as_posix() for f in files], labels=None, classes=[],
                       header=f"images {len(files)}\n")


def _rows(spec: str, file: Path) -> list[tuple[int, str, Optional[str]]]:
    """(line number, path, label or None) of every entry of the list ``file``."""
    try:
        text = file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{spec}: {file} does not exist") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{spec}: {file} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise InputError(f"{spec}: cannot read {file} ({e.strerror})") from None
    if file.suffix.lower() != ".csv":
        return [(n, line.strip(), None) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    reader, rows = csv.reader(io.StringIO(text, newline="")), []
    try:
        for row in reader:
            if any(c.strip() for c in row):
                rows.append((reader.line_num, [c.strip() for c in row]))
    except csv.Error as e:
        raise InputError(f"{spec}: {file} line {reader.line_num}: not readable CSV ({e})") from None
    if not rows:
        raise InputError(f"{spec}: {file} is empty (expected a header: path[,label])")
    header = rows[0][1]
    if "path" not in header or not set(header) <= set(LIST_COLUMNS) or len(set(header)) < len(header):
        raise InputError(f"{spec}: {file}: header {','.join(header)!r}, expected the columns path and optionally "
                         "label, each once")
    where = {c: header.index(c) for c in header}
    for n, row in rows[1:]:
        if len(row) != len(header):
            raise InputError(f"{spec}: {file} line {n}: {len(row)} field(s), the header has {len(header)}")
    return [(n, row[where["path"]], row[where["label"]] if "label" in where else None) for n, row in rows[1:]]


def _label(spec: str, file: Path, line: int, text: str) -> int:
    if not _WHOLE_NUMBER.match(text) or int(text) > MAX_LABEL:
        raise InputError(f"{spec}: {file} line {line}: label {text!r} is not a whole number from 0 to {MAX_LABEL}; "
                         "number the classes (alike in the query and gallery lists) instead of naming them")
    return int(text)


def list_dataset(spec: str, file: Path, location: str) -> FileDataset:
    """``list:FILE`` (see the module doc)."""
    rows = _rows(spec, file)
    if not rows:
        raise InputError(f"{spec}: {file} lists no image")
    seen: dict[str, int] = {}
    files = []
    for n, path, _ in rows:
        if not path:
            raise InputError(f"{spec}: {file} line {n}: no path")
        files.append(file.parent.absolute() / path)  # an absolute path stays itself
        same = os.path.normpath(files[-1])
        if same in seen:
            raise InputError(f"{spec}: {file} line {n}: {path} is listed twice (first on line {seen[same]})")
        seen[same] = n
    labels = None
    if rows[0][2] is not None:
        labels = np.asarray([_label(spec, file, n, label) for n, _, label in rows], dtype=np.int64)
    classes = [] if labels is None else [str(c) for c in np.unique(labels)]
    return FileDataset(spec, name="list", split=file.name, location=location, files=files,
                       names=[path for _, path, _ in rows], labels=labels, classes=classes,
                       header=f"list {len(files)} {'labelled' if labels is not None else 'unlabelled'}\n")
