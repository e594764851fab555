"""Export a task's DualPrompt feature extractor to one self-contained ONNX file.

The graph: ``image`` float32 [N, 3, S, S] -> unprompted query pass -> cosine against the prompt keys
-> per-sample (or the reference's batchwise) top_k -> per-sample e-prompt gather -> prompted pass ->
``embedding`` float32 [N, D] and ``prompt_index`` int64 [N] ([N, top_k] when top_k > 1). Both passes
read the same backbone initializers, so the file holds each weight once. The contract (names,
metadata) is :mod:`infer.runtime.metadata`'s.

Exporter: torch's dynamo-based ``torch.onnx.export`` (needs onnxscript). Its constant folding
materialises transposed copies of small weights once per use; :func:`dedupe_initializers` merges them.
Tracing is most of an export's time, so the tasks of one run share one trace (:class:`TaskExporter`):
their prompts and keys are graph values of their own, filled in per task.
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
from onnx import numpy_helper
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


# EmbeddingExport's parameters that differ between the tasks of one run: the backbone is frozen and the
# classification head is not exported, so one traced graph serves every task of a run with these replaced.
TASK_PARAMETERS = ("model.g_prompt", "model.e_prompt.prompt", "model.e_prompt.prompt_key")


class _TaskInputs(nn.Module):
    """An :class:`EmbeddingExport` with its :data:`TASK_PARAMETERS` passed in as extra inputs, so that the
    tracer keeps each as one graph value of its own (never folded into another constant), which another
    task's values can then replace (:func:`with_values`)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, image: torch.Tensor, g_prompt: torch.Tensor, e_prompt: torch.Tensor, prompt_key: torch.Tensor):
        values = dict(zip(TASK_PARAMETERS, (g_prompt, e_prompt, prompt_key)))
        return torch.func.functional_call(self.module, values, (image,))


def trace_graph(module: nn.Module, input_size: int, output_names: Sequence[str], opset: int, *,
                task_inputs: bool = False) -> onnx.ModelProto:
    """The exporter's graph of ``module`` (image [N, 3, S, S] -> ``output_names``, N dynamic), before
    :func:`finish_onnx`. With ``task_inputs`` (``module`` an :class:`EmbeddingExport`), each of
    :data:`TASK_PARAMETERS` is one initializer of that name holding the module's value, read as it is by
    the graph's nodes."""
    params = dict(module.named_parameters())
    lifted = TASK_PARAMETERS if task_inputs else ()
    values = tuple(params[name].detach() for name in lifted)
    batch = torch.export.Dim(BATCH_AXIS, min=1)
    names = [INPUTS[0].name, "g_prompt", "e_prompt", "prompt_key"][:1 + len(lifted)]
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(_TaskInputs(module) if task_inputs else module,
                                    (torch.rand(2, 3, input_size, input_size), *values), dynamo=True,
                                    opset_version=opset, verbose=False, input_names=names,
                                    output_names=list(output_names), optimize=True,
                                    dynamic_shapes={names[0]: {0: batch}, **{n: None for n in names[1:]}})
    proto = program.model_proto
    graph_inputs = list(proto.graph.input)
    del proto.graph.input[:]
    proto.graph.input.append(graph_inputs[0])
    by_position = dict(zip(names[1:], zip(lifted, values)))
    for value in graph_inputs[1:]:
        name, tensor = by_position[value.name]
        proto.graph.initializer.append(numpy_helper.from_array(tensor.cpu().numpy(), name))
        for node in proto.graph.node:
            node.input[:] = [name if i == value.name else i for i in node.input]
    return proto


def with_values(template: onnx.ModelProto, values: dict[str, torch.Tensor]) -> onnx.ModelProto:
    """A copy of ``template`` whose initializers named in ``values`` hold those tensors (same dtype and
    shape as the ones they replace: anything else is a bug, not input)."""
    proto = onnx.ModelProto()
    proto.CopyFrom(template)
    for tensor in proto.graph.initializer:
        if tensor.name in values:
            new = numpy_helper.from_array(values[tensor.name].detach().cpu().numpy(), tensor.name)
            if (new.data_type, list(new.dims)) != (tensor.data_type, list(tensor.dims)):
                raise ValueError(f"{tensor.name}: {new.data_type} {list(new.dims)} cannot replace "
                                 f"{tensor.data_type} {list(tensor.dims)}")
            tensor.CopyFrom(new)
    return proto


def finish_onnx(proto: onnx.ModelProto, props: dict[str, str], doc: str) -> onnx.ModelProto:
    """``proto`` (from :func:`trace_graph`, changed in place) as a checked file: each weight stored once,
    no exporter annotations, the batch axis named, carrying the metadata ``props`` and description ``doc``."""
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


def trace_onnx(module: nn.Module, input_size: int, output_names: Sequence[str], props: dict[str, str], doc: str,
               opset: int) -> onnx.ModelProto:
    """Trace ``module`` (image [N, 3, S, S] -> ``output_names``, N dynamic) into a checked ONNX model
    with each weight stored once, carrying the metadata ``props`` and the description ``doc``."""
    return finish_onnx(trace_graph(module, input_size, output_names, opset), props, doc)


def backbone_differences(base: DualPromptViT, model: DualPromptViT) -> list[str]:
    """Why ``model`` cannot share ``base``'s backbone: architecture fields, else frozen tensors that differ."""
    a, b = base.cfg.asdict(), model.cfg.asdict()
    arch = [f"{k} {b[k]} (not {a[k]})" for k in a if k != "num_classes" and a[k] != b[k]]
    if arch:
        return ["architecture: " + ", ".join(arch)]
    mine = model.state_dict()
    return [name for name, tensor in base.state_dict().items()
            if name.startswith(DualPromptViT.BACKBONE) and not torch.equal(tensor, mine[name])]


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


def task_of(checkpoint: str | Path) -> int:
    """The task number in a ``task{N}_checkpoint.pth`` file name."""
    match = CHECKPOINT_RE.match(Path(checkpoint).name)
    if not match:
        raise InputError(f"{checkpoint}: cannot tell the task from the name (expected task<N>_checkpoint.pth)")
    return int(match.group(1))


class TaskExporter:
    """Writes task files with one set of options, tracing once per backbone: a task whose checkpoint has
    the architecture and frozen backbone of one already traced gets that graph with its own prompts and
    keys (:data:`TASK_PARAMETERS`) and metadata, which is what tracing it would give, in a fraction of
    the time (tracing is most of an export's time). Keeps one model and graph per distinct backbone."""

    def __init__(self, selection: str = "per-sample", pool: str = "cls", precision: str = "fp32",
                 opset: int = DEFAULT_OPSET, *, gather: str = "per-sample", query: str = "cls"):
        _check_options(selection, pool, precision, opset, gather, query)
        self.modes = dict(selection=selection, pool=pool, precision=precision, gather=gather, query=query)
        self.opset = opset
        self.traced: list[tuple[DualPromptViT, onnx.ModelProto]] = []

    def export(self, checkpoint: str | Path, out_path: str | Path, task: Optional[int] = None) -> ExportResult:
        """Export the checkpoint's feature extractor to ``out_path`` (task number: from the file name
        unless given); returns the file written with the time taken (checkpoint loading included)."""
        start = time.perf_counter()
        checkpoint, out_path = Path(checkpoint), writable(out_path)
        task = task_of(checkpoint) if task is None else task
        model, ckpt = model_from_checkpoint(checkpoint)
        info = task_info(checkpoint, task, model.cfg, ckpt.get("args"), **self.modes)
        m = self.modes
        module = EmbeddingExport(model, m["selection"], m["pool"], m["precision"], gather=m["gather"],
                                 query=m["query"]).eval()
        template = next((proto for base, proto in self.traced if not backbone_differences(base, model)), None)
        if template is None:
            template = trace_graph(module, model.cfg.img_size, [s.name for s in OUTPUTS], self.opset, task_inputs=True)
            self.traced.append((model, template))
        params = dict(module.named_parameters())
        proto = with_values(template, {name: params[name] for name in TASK_PARAMETERS})
        proto = finish_onnx(proto, info.to_props(), _describe(info))
        return save_checked(proto, out_path, unique_parameter_bytes(model, info.precision), start)


def export_task(checkpoint: str | Path, out_path: str | Path, selection: str = "per-sample", pool: str = "cls",
                precision: str = "fp32", opset: int = DEFAULT_OPSET, task: Optional[int] = None, *,
                gather: str = "per-sample", query: str = "cls") -> ExportResult:
    """Export the checkpoint's feature extractor to ``out_path`` (see :class:`TaskExporter`, which
    exports several tasks of a run for little more than one)."""
    return TaskExporter(selection, pool, precision, opset, gather=gather, query=query).export(checkpoint, out_path, task)


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

