"""Export a task's DualPrompt feature extractor to one self-contained ONNX file.

The graph: ``image`` float32 [N, 3, S, S] -> unprompted query pass -> cosine against the prompt keys
-> per-sample (or the reference's batchwise) top_k -> per-sample e-prompt gather -> prompted pass ->
``embedding`` float32 [N, D] and ``prompt_index`` int64 [N] ([N, top_k] when top_k > 1). Both passes
read the same backbone initializers, so the file holds each weight once. The contract (names,
metadata) is :mod:`infer.runtime.metadata`'s.

Exporter: torch's dynamo-based ``torch.onnx.export`` (needs onnxscript). Its constant folding
materialises transposed copies of small weights once per use; :func:`dedupe_initializers` merges them.
"""
from __future__ import annotations

import copy
import hashlib
import io
import time
import warnings
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import onnx
import timm
import torch
import torch.nn as nn

from ..common.atomic import atomic_file
from ..common.digest import file_sha256
from ..common.errors import InputError
from ..common.contract import (BATCH_AXIS, DEFAULT_OPSET, FORMAT_VERSION, GATHERS, INPUTS, MIN_OPSET, OUTPUTS, POOLS,
                               PRECISIONS, QUERIES, SELECTIONS, check_choice)
from ..infer.runtime.metadata import ModelInfo, Preprocessing
from ..train.checkpoint import (CHECKPOINT_RE, checkpoint_path, config_to_args, find_checkpoints, load_checkpoint,
                                model_from_checkpoint, provenance_from_args, save_checkpoint)
from ..train.model import DualPromptConfig, DualPromptViT

SIZE_FACTOR = 1.05  # file bytes allowed per byte of unique parameters (backbone, prompts, keys)
PROTOBUF_LIMIT = 2 ** 31 - 1
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


class EmbeddingExport(nn.Module):
    """What the ONNX file computes, as a module: image -> (embedding, prompt_index), i.e.
    :meth:`DualPromptViT.embed` with the contract's output shapes (prompt_index [N] when top_k is 1).
    With ``precision='fp16'`` a half-precision copy of the model computes; the key cosines stay float32.
    ``gather`` and ``query``: the reference modes of :meth:`DualPromptViT.embed`.
    """

    def __init__(self, model: DualPromptViT, selection: str = "per-sample", pool: str = "cls",
                 precision: str = "fp32", *, gather: str = "per-sample", query: str = "cls"):
        super().__init__()
        for name, value, allowed in (("selection", selection, SELECTIONS), ("pool", pool, POOLS),
                                     ("precision", precision, PRECISIONS), ("gather", gather, GATHERS),
                                     ("query", query, QUERIES)):
            check_choice(name, value, allowed)
        self.model = (model if precision == "fp32" else copy.deepcopy(model).to(_DTYPES[precision])).eval()
        self.selection, self.pool, self.precision, self.gather, self.query = selection, pool, precision, gather, query

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding, idx = self.model.embed(image.to(_DTYPES[self.precision]), self.selection, self.pool,
                                          gather=self.gather, query=self.query)
        return embedding.float(), contract_prompt_index(idx)


def contract_prompt_index(idx: torch.Tensor) -> torch.Tensor:
    """Prompt indices [B, top_k] in the contract's shape: [B] when top_k is 1."""
    return idx[:, 0] if idx.shape[1] == 1 else idx


def unique_parameter_bytes(model: nn.Module, precision: str = "fp32") -> int:
    """Bytes of the parameters the file must hold once: everything but the classification head(s);
    a parameter that several modules share (a bundle's backbone) counts once."""
    width = torch.empty((), dtype=_DTYPES[precision]).element_size()
    return sum(p.numel() * width for name, p in model.named_parameters() if "head" not in name.split("."))


def initializer_bytes(proto: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in proto.graph.initializer)


def dedupe_initializers(proto: onnx.ModelProto) -> int:
    """Merge initializers with equal type, shape and bytes (in place); returns how many were removed.
    Only node inputs are rewritten: the exported graph has no subgraphs and no initializer outputs."""
    graph = proto.graph
    first: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    keep = []
    for t in graph.initializer:
        if not t.raw_data:  # the exporter writes raw_data; anything else is kept as it is
            keep.append(t)
            continue
        key = (t.data_type, tuple(t.dims), hashlib.sha256(t.raw_data).digest())
        if key in first:
            rename[t.name] = first[key]
        else:
            first[key] = t.name
            keep.append(t)
    if not rename:
        return 0
    del graph.initializer[:]
    graph.initializer.extend(keep)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    return len(rename)


def _strip_annotations(proto: onnx.ModelProto) -> None:
    """Drop the exporter's per-node provenance (Python stack traces, FX names) and the shapes of
    intermediate values, which runtimes infer again: together over half of a small model's graph bytes."""
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del proto.graph.value_info[:]


def tool_versions() -> dict[str, str]:
    import onnxscript

    return {"torch": torch.__version__, "timm": timm.__version__, "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__}


def _check_options(selection: str, pool: str, precision: str, opset: int, gather: str = "per-sample",
                   query: str = "cls") -> None:
    for name, value, allowed in (("selection", selection, SELECTIONS), ("pool", pool, POOLS),
                                 ("precision", precision, PRECISIONS), ("gather", gather, GATHERS),
                                 ("query", query, QUERIES)):
        check_choice(f"--{name}", value, allowed)
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise InputError(f"--opset {opset}: this exporter writes opsets {MIN_OPSET} to {newest}")


def build_onnx(model: DualPromptViT, info: ModelInfo, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Trace ``model`` per ``info`` (selection, pool, precision) into a checked ONNX model carrying ``info``."""
    _check_options(info.selection, info.pool, info.precision, opset, info.gather, info.query)
    module = EmbeddingExport(model, info.selection, info.pool, info.precision, gather=info.gather,
                             query=info.query).eval()
    return trace_onnx(module, model.cfg.img_size, [s.name for s in OUTPUTS], info.to_props(), _describe(info),
                      opset)


def trace_onnx(module: nn.Module, input_size: int, output_names: Sequence[str], props: dict[str, str], doc: str,
               opset: int) -> onnx.ModelProto:
    """Trace ``module`` (image [N, 3, S, S] -> ``output_names``, N dynamic) into a checked ONNX model
    with each weight stored once, carrying the metadata ``props`` and the description ``doc``."""
    example = torch.rand(2, 3, input_size, input_size)
    batch = torch.export.Dim(BATCH_AXIS, min=1)
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (example,), dynamo=True, opset_version=opset, verbose=False,
                                    input_names=[s.name for s in INPUTS], output_names=list(output_names),
                                    dynamic_shapes={INPUTS[0].name: {0: batch}}, optimize=True)
    proto = program.model_proto
    dedupe_initializers(proto)
    _strip_annotations(proto)
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_AXIS
    proto.doc_string = doc
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    if proto.ByteSize() > PROTOBUF_LIMIT:
        raise InputError(f"{props['model']}: the export would exceed protobuf's 2 GB limit for one file")
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _describe(info: ModelInfo) -> str:
    selection = ("per-sample: each image's own nearest prompt key, so an embedding does not depend on its batch"
                 if info.selection == "per-sample" else
                 "batchwise (the reference's inference): every image gets the batch's most frequent prompt, "
                 "so an embedding depends on the other images in its batch")
    pooling = "[CLS] after the final norm" if info.pool == "cls" else "mean of all tokens after the final norm"
    modes = ""
    if info.gather == "reference":
        modes += (" E-prompt gather as the public reference's (no permute): key and value roles depend on the "
                  "batch position, so an embedding depends on its position and batch size.")
    if info.query == "notebook":
        modes += (" Query: the element-wise max over the embedded tokens (the original study's notebook), not "
                  "the frozen [CLS].")
    return (f"DualPrompt {info.model} after task {info.task}: image [N, 3, {info.input_size}, {info.input_size}] "
            f"in [0, 1] -> embedding [N, {info.embedding_dim}] ({pooling}, {info.precision}) and prompt_index. "
            f"Prompt selection {selection}.{modes}")


@dataclass(frozen=True)
class ExportResult:
    """One written file and what it cost."""

    path: Path
    seconds: float
    file_bytes: int
    parameter_bytes: int  # unique parameters at the export's precision

    @property
    def size_ratio(self) -> float:
        return self.file_bytes / self.parameter_bytes


def writable(out_path: str | Path) -> Path:
    """``out_path`` once its folder exists: checked before the minutes of tracing, not after."""
    out_path = Path(out_path)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{out_path}: cannot write ({e.strerror or e})") from None
    return out_path


def save_checked(proto: onnx.ModelProto, out_path: Path, weights: int, start: float) -> ExportResult:
    """Write ``proto`` to ``out_path`` (temporary file, then rename) once its stored weights are within
    :data:`SIZE_FACTOR` of the ``weights`` bytes of unique parameters; ``start``: when the export began."""
    stored = initializer_bytes(proto)
    if stored > SIZE_FACTOR * weights:
        raise RuntimeError(f"export stores {stored} bytes of weights for {weights} bytes of parameters: "
                           "a weight is duplicated in the graph")
    try:
        with atomic_file(out_path) as tmp:
            onnx.save_model(proto, tmp)
    except OSError as e:
        raise InputError(f"{out_path}: cannot write ({e.strerror or e})") from None
    return ExportResult(out_path, time.perf_counter() - start, out_path.stat().st_size, weights)


def export_model(model: DualPromptViT, out_path: str | Path, info: ModelInfo, opset: int = DEFAULT_OPSET) -> ExportResult:
    """Write ``model`` as ONNX to ``out_path`` (temporary file, then rename) and check the size bound."""
    start = time.perf_counter()
    out_path = writable(out_path)
    proto = build_onnx(model, info, opset)
    return save_checked(proto, out_path, unique_parameter_bytes(model, info.precision), start)


def task_of(checkpoint: str | Path) -> int:
    """The task number in a ``task{N}_checkpoint.pth`` file name."""
    match = CHECKPOINT_RE.match(Path(checkpoint).name)
    if not match:
        raise InputError(f"{checkpoint}: cannot tell the task from the name (expected task<N>_checkpoint.pth)")
    return int(match.group(1))


def export_task(checkpoint: str | Path, out_path: str | Path, selection: str = "per-sample", pool: str = "cls",
                precision: str = "fp32", opset: int = DEFAULT_OPSET, task: Optional[int] = None, *,
                gather: str = "per-sample", query: str = "cls") -> ExportResult:
    """Export the checkpoint's feature extractor to ``out_path``; returns the file written with the
    time taken (checkpoint loading included) and the sizes."""
    start = time.perf_counter()
    checkpoint = Path(checkpoint)
    _check_options(selection, pool, precision, opset, gather, query)
    task = task_of(checkpoint) if task is None else task
    model, ckpt = model_from_checkpoint(checkpoint)
    info = task_info(checkpoint, task, model.cfg, ckpt.get("args"), selection=selection, pool=pool,
                     precision=precision, gather=gather, query=query)
    result = export_model(model, out_path, info, opset)
    return ExportResult(result.path, time.perf_counter() - start, result.file_bytes, result.parameter_bytes)


def task_info(checkpoint: Path, task: int, cfg: DualPromptConfig, args: object, *, selection: str, pool: str,
              precision: str, gather: str, query: str) -> ModelInfo:
    """The metadata of task ``task``'s export from ``checkpoint`` (architecture ``cfg``, training ``args``)."""
    return ModelInfo(format_version=FORMAT_VERSION, task=task, checkpoint=checkpoint.name,
                     checkpoint_sha256=file_sha256(checkpoint), model=cfg.model, embedding_dim=cfg.embed_dim,
                     input_size=cfg.img_size, top_k=cfg.top_k, pool=pool, selection=selection,
                     precision=precision, preprocessing=Preprocessing.for_input_size(cfg.img_size),
                     versions=tool_versions(), architecture=cfg.asdict(),
                     provenance=provenance_from_args(args), gather=gather, query=query)


def select_checkpoints(checkpoint_dir: str | Path, tasks: Optional[Sequence[int]]) -> dict[int, Path]:
    """Checkpoints for ``tasks`` (None: every one found); a missing task is an error naming those found.
    Each is read once here (:func:`~train.checkpoint.load_checkpoint` refuses NaN or Inf weights and
    dtypes the model does not hold), so a bad one stops the command before any file is exported."""
    found = find_checkpoints(checkpoint_dir)
    missing = [t for t in tasks or () if t not in found]
    if missing:
        raise InputError(f"{checkpoint_dir}: no checkpoint for task {', '.join(map(str, missing))} "
                         f"(tasks found: {', '.join(map(str, found))})")
    chosen = found if tasks is None else {t: found[t] for t in tasks}
    for path in chosen.values():
        load_checkpoint(path)
    return chosen


def export_random(model_name: str, workdir: str | Path, seed: int = 0, selection: str = "per-sample",
                  pool: str = "cls", precision: str = "fp32", opset: int = DEFAULT_OPSET,
                  **arch: object) -> ExportResult:
    """Export a random-weight model of a timm ViT name (``arch`` overrides its config) as a user would:
    writes ``<workdir>/checkpoint/task1_checkpoint.pth`` (not timed), then times the export of it to
    ``<workdir>/task1.onnx``."""
    torch.manual_seed(seed)
    model = DualPromptViT(DualPromptConfig.from_name(model_name, **arch))
    ckpt = save_checkpoint(checkpoint_path(Path(workdir) / "checkpoint", 1), model, None, 0,
                           config_to_args(model.cfg, seed=seed))
    del model
    return export_task(ckpt, Path(workdir) / "task1.onnx", selection, pool, precision, opset)

