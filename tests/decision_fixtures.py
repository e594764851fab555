"""Constructed embeddings with known decisions, written as stored sets (as ``embed`` would) so that
``evaluate --from-store`` and ``gate`` run on them in a second.

The data: ``pairs`` classes of two items each (label = pair), the partners nearly equal and every
other item a random direction, so a query's first hit is its partner (query set = gallery set, the
query's own image left out): top-1 is 1.0 for a model on its own gallery, and a rotated space finds
nothing in the old one."""
from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np

from dpcompat.infer.data.datasets import dataset_key, dataset_location
from dpcompat.infer.runtime.metadata import Preprocessing
from dpcompat.infer.store.manifest import DataRecord, Manifest, ModelRecord
from dpcompat.infer.store.sets import set_path
from dpcompat.infer.store.shards import write_set

SPEC = "cifar10:test"


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def pairs_data(pairs: int = 200, dim: int = 32, seed: int = 0, noise: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings float32 [2 * pairs, dim], labels int64): item 2p and 2p + 1 are class p."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((pairs, dim))
    x = np.repeat(centres, 2, axis=0) + noise * rng.standard_normal((2 * pairs, dim))
    return unit(x), np.repeat(np.arange(pairs), 2).astype(np.int64)


def rotation(dim: int, seed: int = 1) -> np.ndarray:
    """A random orthogonal matrix [dim, dim] (QR of a Gaussian one): cosines within a space are kept."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def write_model(root: Path, model_id: str, x: np.ndarray, labels: np.ndarray, *, task: int,
                provenance: Optional[dict] = None) -> Path:
    """A stand-in model file ``root/exports/<id>.onnx`` and its stored set of ``x`` on cifar10:test
    under ``root/embeddings`` (data path ``root/data``), recording the file's sha256; returns the file."""
    file = root / "exports" / f"{model_id}.onnx"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(f"stand-in model {model_id}".encode())
    data_path = root / "data"
    data = DataRecord(spec=SPEC, location=dataset_location(SPEC, data_path), name="cifar10", split="test",
                      fingerprint="f" * 64, size=len(x))
    model = ModelRecord(id=model_id, sha256=hashlib.sha256(file.read_bytes()).hexdigest(), task=task, file=str(file))
    manifest = Manifest(model=model, dataset=data, preprocessing=asdict(Preprocessing()), provenance=provenance or {})
    write_set(set_path(root / "embeddings", model_id, dataset_key(SPEC, data_path)), x, labels, manifest)
    return file
