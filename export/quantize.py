"""int8 exports: onnxruntime static quantisation of an fp32 export, calibrated on images of a data set.

Weights are quantised per channel to int8 and activations to uint8 (the U8S8 form onnxruntime's CPU
kernels run fastest), with QuantizeLinear/DequantizeLinear pairs around each quantised operator (QDQ);
activation ranges are the min/max observed on the calibration images. onnxruntime's calibrator keeps
every activation of every calibration image until the end (its option to merge ranges per batch
drops the data instead, in onnxruntime 1.31), so memory grows with ``count`` times every activation
of one image: keep ``count`` small for large models. The metadata is the fp32
export's with ``precision`` = ``int8``. The result is compared with the fp32 file on the calibration
images, so a quantisation that changes embeddings or prompt choices is seen at once.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import onnx

from ..common.atomic import atomic_file
from ..common.contract import EMBEDDING_OUTPUT, INPUT_NAME, PROMPT_INDEX_OUTPUT
from ..common.errors import InputError
from ..infer.data.base import Dataset
from ..infer.data.preprocess import preprocess_batch
from ..infer.runtime.session import create_session, model_info, run_model


@dataclass(frozen=True)
class QuantizeResult:
    """The written file and how far it is from the fp32 export on the calibration images."""

    path: Path
    seconds: float
    file_bytes: int
    images: int
    mean_cosine: float
    min_cosine: float
    prompt_agreement: float  # share of images whose e-prompt choice equals the fp32 file's


def calibration_batches(dataset: Dataset, source: Path, count: int, batch_size: int = 4) -> list[np.ndarray]:
    """The first ``count`` images of ``dataset`` (evenly spaced over it), preprocessed as ``source``'s
    metadata says, in float32 batches [B, 3, S, S]."""
    if not 1 <= count:
        raise InputError(f"--calibration-count {count}: must be at least 1")
    info = model_info(create_session(source, "cpu")[0], source)
    picks = np.unique(np.linspace(0, len(dataset) - 1, min(count, len(dataset))).astype(int))
    return [preprocess_batch([dataset.image(int(i)) for i in picks[s:s + batch_size]], info.preprocessing)
            for s in range(0, len(picks), batch_size)]


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over preprocessed batches."""

    def __init__(self, batches: list[np.ndarray]):
        self._it: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        batch = next(self._it, None)
        return None if batch is None else {INPUT_NAME: batch}


def _relabel(path: Path) -> onnx.ModelProto:
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    props["precision"] = "int8"
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    proto.doc_string = proto.doc_string.replace(", fp32)", ", int8 static quantisation)")
    return proto


def compare_outputs(fp32: Path, int8: Path, batches: list[np.ndarray]) -> tuple[float, float, float]:
    """(mean cosine, min cosine, prompt agreement) of the two files' outputs on ``batches``."""
    outs = []
    for path in (fp32, int8):
        session = create_session(path, "cpu")[0]
        runs = [run_model(session, b, (EMBEDDING_OUTPUT, PROMPT_INDEX_OUTPUT)) for b in batches]
        outs.append((np.concatenate([r[EMBEDDING_OUTPUT] for r in runs]).astype(np.float64),
                     np.concatenate([r[PROMPT_INDEX_OUTPUT] for r in runs])))
    (a, pa), (b, pb) = outs
    cos = np.einsum("nd,nd->n", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    if not np.isfinite(cos).all():
        raise InputError(f"{int8}: NaN or Inf embeddings after quantisation; nothing kept")
    agree = np.all(pa.reshape(len(pa), -1) == pb.reshape(len(pb), -1), axis=1)
    return float(cos.mean()), float(cos.min()), float(agree.mean())


def quantize_int8(source: str | Path, out_path: str | Path, dataset: Dataset, *, count: int = 64) -> QuantizeResult:
    """Write an int8 static quantisation of the fp32 export ``source`` to ``out_path`` (atomically),
    calibrated on ``count`` images of ``dataset``."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    source, out_path = Path(source), Path(out_path)
    start = time.perf_counter()
    if model_info(create_session(source, "cpu")[0], source).precision != "fp32":
        raise InputError(f"{source}: int8 quantisation starts from an fp32 export")
    batches = calibration_batches(dataset, source, count)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{out_path}: cannot write ({e.strerror or e})") from None
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".quantize.") as tmp:
        raw = Path(tmp) / "int8.onnx"
        quantize_static(str(source), str(raw), _Reader(batches), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        with atomic_file(out_path) as final:
            onnx.save_model(_relabel(raw), str(final))
            mean_cos, min_cos, agreement = compare_outputs(source, final, batches)
    return QuantizeResult(out_path, time.perf_counter() - start, out_path.stat().st_size,
                          sum(len(b) for b in batches), mean_cos, min_cos, agreement)
