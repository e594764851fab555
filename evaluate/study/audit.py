"""Data overlap audit: exact duplicates by content hash and near-duplicates by embedding, between
data sets (and within one).

Exact: every item is hashed twice (sha256 of its decoded RGB pixels with their size, and of its bytes
as stored: the file of a folder data set, the array row of CIFAR or npz), one dictionary lookup per
item, so the time is linear in the number of items. Near: every item of the left set is embedded and
its ``k`` nearest right items by cosine are found in blocks (``exact_topk``); a pair is a
near-duplicate when its cosine is at least the threshold.
"""
from __future__ import annotations

import hashlib
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

from ...common.contract import EMBEDDING_OUTPUT
from ...common.errors import InputError
from ...infer.data.base import Dataset
from ...infer.data.datasets import open_dataset
from ...infer.embed import embed_dataset
from ...infer.runtime.options import RuntimeOptions
from ...infer.runtime.session import create_session
from ..search.indexes import exact_topk
from ..pipeline import once_to_stderr

DEFAULT_THRESHOLD = 0.95
QUERY_BLOCK, GALLERY_BLOCK = 1024, 8192  # 32 MiB of float32 similarities at a time, never N x M
QUERY_OUTPUT = "query"  # an export's frozen-backbone feature, when the graph has it
FEATURES = ("auto", EMBEDDING_OUTPUT, QUERY_OUTPUT)


@dataclass
class Pair:
    """Item ``left_index`` of set ``left`` and item ``right_index`` of set ``right`` (indices into
    the audited specs); ``cosine`` is None without a model."""

    left: int
    left_index: int
    right: int
    right_index: int
    pixels_equal: bool = False
    bytes_equal: bool = False
    cosine: Optional[float] = None

    @property
    def key(self) -> tuple[int, int, int, int]:
        return self.left, self.left_index, self.right, self.right_index


@dataclass
class Comparison:
    """One audited pair of sets (``left == right``: within one set, each unordered pair once)."""

    left: int
    right: int
    pairs: list[Pair] = field(default_factory=list)  # exact or at/above the threshold
    closest: list[Pair] = field(default_factory=list)  # every top-k neighbour pair, for the contact sheet


@dataclass
class Audit:
    datasets: list[Dataset]
    comparisons: list[Comparison]
    threshold: float
    k: int
    model: Optional[str]
    feature: Optional[str]

    @property
    def found(self) -> bool:
        return any(c.pairs for c in self.comparisons)


def content_hashes(dataset: Dataset, *, progress: bool = False) -> tuple[list[bytes], list[bytes]]:
    """(pixel digests, stored-byte digests) of every item, in order."""
    pixels, stored = [], []
    for i in tqdm(range(len(dataset)), desc=f"hash {dataset.spec}", unit="img", disable=not progress, file=sys.stderr):
        image = dataset.image(i)
        pixels.append(hashlib.sha256(f"{image.size}".encode() + np.asarray(image).tobytes()).digest())
        stored.append(hashlib.sha256(dataset.stored_bytes(i)).digest())
    return pixels, stored


def equal_pairs(left: Sequence[bytes], right: Optional[Sequence[bytes]]) -> set[tuple[int, int]]:
    """Index pairs (i, j) with ``left[i] == right[j]``; with ``right`` None, pairs i < j within
    ``left``. One dictionary pass: linear time in the items plus the pairs found."""
    where: dict[bytes, list[int]] = defaultdict(list)
    for i, digest in enumerate(left):
        where[digest].append(i)
    if right is None:
        return {pair for group in where.values() for pair in combinations(group, 2)}
    return {(i, j) for j, digest in enumerate(right) for i in where.get(digest, ())}


def _exact(comparison: Comparison, hashes: list[tuple[list[bytes], list[bytes]]]) -> dict[tuple, Pair]:
    a, b = comparison.left, comparison.right
    same = a == b
    by_pixels = equal_pairs(hashes[a][0], None if same else hashes[b][0])
    by_bytes = equal_pairs(hashes[a][1], None if same else hashes[b][1])
    return {(a, i, b, j): Pair(a, i, b, j, (i, j) in by_pixels, (i, j) in by_bytes)
            for i, j in sorted(by_pixels | by_bytes)}


def _near(comparison: Comparison, embeddings: list[np.ndarray], k: int, threshold: float,
          found: dict[tuple, Pair]) -> None:
    """Add cosines to the exact pairs, near pairs to ``found`` and every top-k pair to ``closest``."""
    a, b = comparison.left, comparison.right
    left, right = embeddings[a], embeddings[b]
    for pair in found.values():
        pair.cosine = float(np.dot(left[pair.left_index], right[pair.right_index]))
    index = exact_topk(left, right, min(k, len(right) - (a == b)), exclude_self=a == b, query_block=QUERY_BLOCK,
                       gallery_block=GALLERY_BLOCK)
    sims = np.empty(index.shape, np.float32)
    for start in range(0, len(left), QUERY_BLOCK):
        rows = np.asarray(left[start:start + QUERY_BLOCK], np.float32)
        sims[start:start + len(rows)] = np.einsum("nd,nkd->nk", rows, right[index[start:start + len(rows)]])
    closest: dict[tuple, Pair] = {}
    for i, j, s in zip(np.repeat(np.arange(len(left)), sims.shape[1]), index.ravel(), sims.ravel()):
        i, j = (int(min(i, j)), int(max(i, j))) if a == b else (int(i), int(j))
        key = (a, i, b, j)
        pair = found.get(key) or closest.get(key) or Pair(a, i, b, j, cosine=float(s))
        closest[key] = pair
        if s >= threshold:
            found[key] = pair
    comparison.closest = sorted(closest.values(), key=lambda p: -p.cosine)


def _comparisons(count: int, within: bool) -> list[Comparison]:
    pairs = list(combinations(range(count), 2))
    if within:
        pairs = [(i, i) for i in range(count)] + pairs
    return [Comparison(a, b) for a, b in pairs]


def _feature(model: Path, feature: str) -> str:
    """The graph output to embed with; 'auto' is the frozen-backbone ``query`` when the export has it."""
    if feature not in FEATURES:
        raise InputError(f"--feature {feature!r}: expected one of {', '.join(FEATURES)}")
    session, _ = create_session(model, "cpu")  # read for its output names only
    outputs = [o.name for o in session.get_outputs()]
    if feature == "auto":
        return QUERY_OUTPUT if QUERY_OUTPUT in outputs else EMBEDDING_OUTPUT
    if feature not in outputs:
        raise InputError(f"{model}: no output {feature!r} (it has {', '.join(outputs)})")
    return feature


def _check_options(specs: Sequence[str], model: Optional[str | Path], threshold: float, k: int) -> None:
    if not specs:
        raise InputError("audit: give at least one data set spec (e.g. cifar10:train cifar100:train)")
    twice = sorted({s for s in specs if specs.count(s) > 1})
    if twice:
        raise InputError(f"audit: {', '.join(twice)} given twice (use --within to audit a set against itself)")
    if not -1.0 <= threshold <= 1.0:
        raise InputError(f"--threshold {threshold}: a cosine, must be between -1 and 1")
    if k < 1:
        raise InputError(f"--k {k}: must be at least 1")
    if model is not None and not Path(model).is_file():
        raise InputError(f"{model}: no such ONNX file")


def pair_order(pair: Pair) -> tuple:
    """Sort key: exact duplicates first, then by decreasing cosine."""
    return not (pair.pixels_equal or pair.bytes_equal), -(pair.cosine if pair.cosine is not None else 1.0), pair.key


def run_audit(specs: Sequence[str], data_path: str | Path = "data", *, model: Optional[str | Path] = None,
              feature: str = "auto", threshold: float = DEFAULT_THRESHOLD, k: int = 5, within: Optional[bool] = None,
              store: str | Path = "embeddings", runtime: RuntimeOptions = RuntimeOptions()) -> Audit:
    """Audit every two of the data sets ``specs`` (and each set against itself with ``within``, the
    default for a single spec): exact duplicates always, near-duplicates when ``model`` (an export)
    is given, embedding into ``store`` (reused when already there) with its ``feature`` output and
    ``runtime`` (whose ``progress`` also shows the hashing)."""
    specs = list(specs)
    _check_options(specs, model, threshold, k)
    runtime.check()
    datasets = [open_dataset(s, data_path) for s in specs]
    output = _feature(Path(model), feature) if model is not None else None
    comparisons = _comparisons(len(datasets), len(specs) == 1 if within is None else within)
    hashes = [content_hashes(d, progress=runtime.progress) for d in datasets]
    embeddings, warn = None, once_to_stderr()
    if model is not None:
        model = Path(model)
        model_id = model.stem if output == EMBEDDING_OUTPUT else f"{model.stem}-{output}"
        embeddings = [embed_dataset(model, d, store, runtime=runtime, model_id=model_id, warn=warn,
                                    output=output).set.embeddings for d in datasets]
    for c in comparisons:
        found = _exact(c, hashes)
        if embeddings is not None and len(datasets[c.right]) > (c.left == c.right):
            _near(c, embeddings, k, threshold, found)
        c.pairs = sorted(found.values(), key=pair_order)
    return Audit(datasets, comparisons, threshold, k, str(model) if model is not None else None, output)
