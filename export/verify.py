"""``verify``: an exported file on onnxruntime against its source checkpoint in PyTorch.

Both sides get the same float32 arrays: images preprocessed once with the export's own metadata
(:mod:`infer.data.preprocess`), or seeded random pixels in [0, 1].
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import onnxruntime as ort
import torch

from .parity import BATCH_SIZES, TOLERANCES, Forward, ParityReport, Similarity, compare
from ..infer.data.datasets import open_dataset
from ..infer.data.files import IMAGE_SUFFIXES, image_files, open_image
from ..common.digest import file_sha256
from .onnx_export import contract_prompt_index
from ..common.errors import InputError
from ..common.contract import EMBEDDING_OUTPUT, PROMPT_INDEX_OUTPUT
from ..infer.runtime.options import TensorRTOptions
from ..infer.runtime.metadata import ModelInfo
from ..infer.data.preprocess import preprocess_batch
from ..infer.runtime.session import create_session, model_info, run_model
from ..train.checkpoint import (DEFAULT_CHECKPOINT_DIR, checkpoint_folder, distinct_folders, model_from_checkpoint,
                                nearby_checkpoint_dirs, pointer_to)
from ..train.model import DualPromptViT

DEFAULT_COUNT = 64
MAX_INPUT_BYTES = 2 ** 31  # every compared input is held at once: 2 GiB of float32 images at most


@dataclass(frozen=True)
class Inputs:
    """Where the compared images come from: ``images_dir`` (every image file below it), ``dataset``
    (an :func:`infer.data.datasets.open_dataset` spec such as ``cifar10:test``, read from ``data_path``), or
    else ``count`` random images from ``seed``. At most ``count`` images are used."""

    images_dir: Optional[str] = None
    dataset: Optional[str] = None
    data_path: str = "data"
    count: int = DEFAULT_COUNT
    seed: int = 0

    def __post_init__(self):
        if self.images_dir is not None and self.dataset is not None:
            raise InputError("give --images or --dataset, not both")
        if self.count < 2:
            raise InputError(f"{self.count} images: need at least 2 to compare neighbours")

    def describe(self) -> str:
        if self.images_dir is not None:
            return f"images under {self.images_dir}"
        if self.dataset is not None:
            return f"images of {self.dataset} from {self.data_path}"
        return f"random images (uniform pixels, seed {self.seed})"

    def load(self, info: ModelInfo) -> np.ndarray:
        """float32 [N, 3, S, S] model inputs for an export with metadata ``info``."""
        if self.images_dir is not None:
            files = _image_files(Path(self.images_dir))[:self.count]
            _check_bytes(len(files), info.input_size)
            return preprocess_batch([open_image(p) for p in files], info.preprocessing)
        if self.dataset is not None:
            data = open_dataset(self.dataset, self.data_path)
            count = _check_bytes(min(self.count, len(data)), info.input_size)
            return preprocess_batch([data.image(i) for i in range(count)], info.preprocessing)
        _check_bytes(self.count, info.input_size)
        size = info.input_size
        return np.random.default_rng(self.seed).random((self.count, 3, size, size), dtype=np.float32)


def _check_bytes(count: int, size: int) -> int:
    """``count`` if that many float32 [3, size, size] inputs fit in MAX_INPUT_BYTES; else InputError."""
    if count * 3 * size * size * 4 > MAX_INPUT_BYTES:
        most = MAX_INPUT_BYTES // (3 * size * size * 4)
        raise InputError(f"--limit/--random {count}: {count} inputs of 3 x {size} x {size} are held at once, "
                         f"above {MAX_INPUT_BYTES / 2**30:.0f} GiB; use at most {most}")
    return count


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InputError(f"--images {folder}: not a folder")
    files = image_files(folder)
    if len(files) < 2:
        raise InputError(f"--images {folder}: {len(files)} image files ({', '.join(IMAGE_SUFFIXES)}), need at least 2")
    return files


# (images float32 [B, 3, S, S], query mode) -> the frozen backbone's q(x) [B, dim]
Queries = Callable[[np.ndarray, str], torch.Tensor]


def model_queries(model: DualPromptViT) -> Queries:
    """``model``'s own query pass, computed at every call."""
    def queries(images: np.ndarray, query: str) -> torch.Tensor:
        with torch.inference_mode():
            return model.query(torch.from_numpy(images), query=query)

    return queries


def cached_queries(model: DualPromptViT) -> Queries:
    """``model``'s query pass, computed once per distinct batch and mode: every task of a run has the
    same frozen backbone, so a bundle's tasks (and its ``query`` output) share one."""
    cache: dict[tuple, torch.Tensor] = {}

    def queries(images: np.ndarray, query: str) -> torch.Tensor:
        key = (query, images.shape, hashlib.sha256(np.ascontiguousarray(images).tobytes()).digest())
        if key not in cache:
            cache[key] = model_queries(model)(images, query)
        return cache[key]

    return queries


def torch_forward(model: DualPromptViT, selection: str, pool: str, *, gather: str = "per-sample",
                  query: str = "cls", queries: Optional[Queries] = None) -> Forward:
    """The PyTorch model as a :data:`~export.parity.Forward` (prompt index [B] when top_k is 1);
    ``queries``: where its q(x) comes from (default: its own query pass)."""
    queries = queries or model_queries(model)

    def forward(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = queries(images, query)
        with torch.inference_mode():
            embedding, idx = model.embed(torch.from_numpy(images), selection, pool, gather=gather, query=query,
                                         query_features=q)
        return embedding.numpy(), contract_prompt_index(idx).numpy()

    return forward


def torch_similarity(model: DualPromptViT, *, query: str = "cls", queries: Optional[Queries] = None) -> Similarity:
    """Cosines between the PyTorch model's queries (from ``queries``, default its own pass) and its prompt keys."""
    queries = queries or model_queries(model)

    def similarity(images: np.ndarray) -> np.ndarray:
        q = queries(images, query)
        with torch.inference_mode():
            return model.prompt_similarity(q).numpy()

    return similarity


def onnx_forward(session: ort.InferenceSession) -> Forward:
    """An onnxruntime session of an export as a :data:`~export.parity.Forward`."""
    def forward(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = run_model(session, images)
        return out[EMBEDDING_OUTPUT], out[PROMPT_INDEX_OUTPUT]

    return forward


def source_checkpoint(onnx_path: str | Path, info: ModelInfo, checkpoint_dir: Optional[str | Path]) -> Path:
    """The checkpoint an export names, in ``checkpoint_dir``; with None, the first of
    ``output/checkpoint`` and the layouts ``export``, ``demo`` and ``bench export`` write beside an export
    (``<dir>/checkpoint``, ``<dir>/../output/checkpoint``, ``<dir>/../checkpoint``) that holds it. When
    none does, the error lists those folders (each location once) and names any other folder nearby
    (:func:`~train.checkpoint.nearby_checkpoint_dirs`) that holds it."""
    if checkpoint_dir is not None:
        return checkpoint_folder(checkpoint_dir) / info.checkpoint
    here = Path(onnx_path).parent
    folders = distinct_folders([DEFAULT_CHECKPOINT_DIR, here / "checkpoint", here.parent / "output" / "checkpoint",
                                here.parent / "checkpoint"])
    found = next((f / info.checkpoint for f in folders if (f / info.checkpoint).is_file()), None)
    if found is None:
        elsewhere = nearby_checkpoint_dirs(info.checkpoint, exclude=folders)
        raise InputError(f"{onnx_path}: its source checkpoint {info.checkpoint} is in none of "
                         f"{', '.join(map(str, folders))}" +
                         (pointer_to(elsewhere, f"{info.checkpoint} is") if elsewhere else "; name its folder with --checkpoint-dir"))
    return found


def source_model(checkpoint: Path, onnx_path: str | Path, info: ModelInfo) -> DualPromptViT:
    """The PyTorch model of ``checkpoint``, once it is the very file ``onnx_path`` was exported from
    (the sha256 the metadata ``info`` records)."""
    if not checkpoint.is_file():
        raise InputError(f"{checkpoint}: no such checkpoint (the source of {onnx_path} was {info.checkpoint})")
    if file_sha256(checkpoint) != info.checkpoint_sha256:
        raise InputError(f"{checkpoint}: not the checkpoint {onnx_path} was exported from "
                         f"(its sha256 differs from the metadata's, source {info.checkpoint})")
    return model_from_checkpoint(checkpoint)[0]


def verify_export(onnx_path: str | Path, checkpoint: Optional[str | Path] = None,
                  checkpoint_dir: Optional[str | Path] = None, inputs: Inputs = Inputs(),
                  provider: str = "cpu", batch_sizes: Sequence[int] = BATCH_SIZES, *,
                  threads: Optional[int] = None, trt: Optional[TensorRTOptions] = None) -> ParityReport:
    """Compare ``onnx_path`` on onnxruntime with ``checkpoint`` in PyTorch (default: the file the
    metadata names, in ``checkpoint_dir`` or found beside the export), under the tolerances of the
    export's precision. The checkpoint must be the one it was exported from (same sha256); see
    :func:`source_checkpoint`. ``threads`` and ``trt`` go to :func:`infer.runtime.session.create_session`."""
    start = time.perf_counter()
    session, used = create_session(onnx_path, provider, threads=threads, trt=trt)
    info = model_info(session, onnx_path)
    checkpoint = Path(checkpoint) if checkpoint is not None else source_checkpoint(onnx_path, info, checkpoint_dir)
    model = source_model(checkpoint, onnx_path, info)
    images = inputs.load(info)
    report = compare(torch_forward(model, info.selection, info.pool, gather=info.gather, query=info.query),
                     onnx_forward(session), images, TOLERANCES[info.precision],
                     torch_similarity(model, query=info.query), top_k=info.top_k, selection=info.selection,
                     precision=info.precision, batch_sizes=batch_sizes,
                     batch_dependent=info.selection != "per-sample" or info.gather != "per-sample")
    report.context = {"onnx": str(onnx_path), "checkpoint": str(checkpoint), "task": info.task,
                      "model": info.model, "pool": info.pool, "gather": info.gather, "query": info.query,
                      "provider": used, "inputs": inputs.describe(),
                      "count": len(images), "batch_sizes": list(batch_sizes),
                      "seconds": round(time.perf_counter() - start, 2)}
    return report
