"""Benchmarks that need torch: PyTorch eager throughput of the model an export came from."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..common.errors import InputError
from ..common.tables import format_table
from ..infer.runtime.throughput import median_seconds
from ..infer.runtime.metadata import ModelInfo
from ..train.checkpoint import model_from_checkpoint


def torch_throughput(checkpoint: str | Path, info: ModelInfo, device: str, batch_sizes: Sequence[int],
                     repeats: int = 5) -> list[dict]:
    """images/s of the checkpoint's model in PyTorch eager, computing what the export computes
    (same selection and pool) on ``device``: fp32 on CPU, bf16 autocast on CUDA for an fp16 export."""
    model, _ = model_from_checkpoint(checkpoint)
    dev = torch.device(device)
    model.to(dev)
    half = dev.type == "cuda" and info.precision == "fp16"
    rng = np.random.default_rng(0)
    rows = []
    for bs in batch_sizes:
        images = torch.from_numpy(rng.random((bs, 3, info.input_size, info.input_size), dtype=np.float32)).to(dev)

        @torch.inference_mode()
        def run():
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=half):
                out = model.embed(images, info.selection, info.pool)[0]
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return out

        seconds = median_seconds(run, warmup=1, repeats=repeats)
        rows.append({"batch_size": bs, "seconds": seconds, "images_per_s": bs / seconds,
                     "precision": "bf16-autocast" if half else "fp32"})
    return rows


def bench_export(model_name: str, workdir: str | Path, precision: str = "fp32", **arch: object) -> dict:
    """Export time (checkpoint loading included) and file size of a random-weight model."""
    from ..export.onnx_export import export_random
    from .machine import machine_info

    r = export_random(model_name, workdir, precision=precision, **arch)
    return {"benchmark": "export", "model": model_name, "architecture": arch, "precision": precision,
            "seconds": r.seconds, "file_bytes": r.file_bytes, "unique_parameter_bytes": r.parameter_bytes,
            "size_ratio": r.size_ratio, "onnx": str(r.path), "machine": machine_info()}


def torch_runner(model_path: str | Path, checkpoint_dir: Optional[str | Path],
                 repeats: int) -> Callable[[ModelInfo, str, Sequence[int]], list[dict]]:
    """``bench embed --compare-torch``'s runner: :func:`torch_throughput` of the checkpoint the export
    ``model_path`` names (found as ``verify`` finds it, or in ``checkpoint_dir``)."""
    from ..export.verify import source_checkpoint
    from ..train.checkpoint import checkpoint_folder

    if checkpoint_dir is not None:
        checkpoint_folder(checkpoint_dir)

    def run(info: ModelInfo, device: str, sizes: Sequence[int]) -> list[dict]:
        ckpt = source_checkpoint(model_path, info, checkpoint_dir)
        if not ckpt.is_file():
            raise InputError(f"{ckpt}: the source checkpoint of {model_path} is needed for --compare-torch")
        return torch_throughput(ckpt, info, device, sizes, repeats)
    return run


def format_export(result: dict) -> str:
    """``bench export``'s table."""
    cols = [("seconds", "export s", ".1f"), ("file_bytes", "file bytes", ",d"),
            ("unique_parameter_bytes", "parameter bytes", ",d"), ("size_ratio", "ratio", ".4f")]
    return f"{result['model']} ({result['precision']})\n" + format_table([result], cols)
