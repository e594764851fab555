"""Export several tasks of one DualPrompt run as one ONNX file (a bundle) that stores the frozen backbone once.

DualPrompt never trains the backbone, so every task's checkpoint holds the same ViT weights and the
query pass q(x) is the same function for every task. The bundle's graph computes the embedded tokens
and q(x) once, then for every task t: cosine against task t's keys, selection, gather of task t's
e-prompts, and one prompted pass at the batch's size N with task t's g- and e-prompts (T passes of N
rows: one pass over T x N rows outgrew the CPU's caches as the batch grew), so an image's outputs
never depend on the other images of its batch (per-sample selection). Outputs: see :mod:`dpcompat.common.contract`.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from ..common.contract import BUNDLE_OUTPUTS, GATHERS, POOLS, PRECISIONS, QUERIES, SELECTIONS, check_choice
from ..common.errors import InputError
from ..infer.runtime.bundle import BundleInfo
from ..train.checkpoint import model_from_checkpoint
from ..train.model import DualPromptViT
from .onnx_export import (_DTYPES, DEFAULT_OPSET, ExportResult, _check_options, backbone_differences, save_checked,
                          task_info, trace_onnx, unique_parameter_bytes, writable)

DEFAULT_NAME = "tasks.onnx"
_SHOWN = 6  # differing tensors named per task in a refusal


class BundleExport(nn.Module):
    """What a bundle computes, as a module: image [N, 3, S, S] -> (embedding [N, T, D], prompt_index
    [N, T] or [N, T, top_k], query [N, D]), from task models that share one backbone (see
    :func:`share_backbone`). Each task's slice is :meth:`DualPromptViT.embed` of that task with the
    same options; ``query`` is the unprompted [CLS] whatever the ``query`` mode that selects prompts.
    ``precision='fp16'`` computes in a half-precision copy, key cosines in float32."""

    def __init__(self, models: Sequence[DualPromptViT], *, selection: str = "per-sample", pool: str = "cls",
                 precision: str = "fp32", gather: str = "per-sample", query: str = "cls"):
        super().__init__()
        for name, value, allowed in (("selection", selection, SELECTIONS), ("pool", pool, POOLS),
                                     ("precision", precision, PRECISIONS), ("gather", gather, GATHERS),
                                     ("query", query, QUERIES)):
            check_choice(name, value, allowed)
        tasks = nn.ModuleList(models)
        self.tasks = (tasks if precision == "fp32" else copy.deepcopy(tasks).to(_DTYPES[precision])).eval()
        self.selection, self.pool, self.precision, self.gather, self.query = selection, pool, precision, gather, query

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        base, n = self.tasks[0], image.shape[0]
        x = base.embedded_tokens(image.to(_DTYPES[self.precision]))
        cls = base.query(x)
        q = cls if self.query == "cls" else base.query(x, query=self.query)
        index = [m.select_prompts(m.prompt_similarity(q), self.selection, gather=self.gather) for m in self.tasks]
        # one prompted pass per task at the batch's size: a single pass over T x N rows outgrows the
        # caches (attention scores, MLP activations) and loses per image what it saves in calls
        embedding = torch.stack([base.pool_tokens(base.tokens(x, m.e_prompt.gather(i, gather=self.gather),
                                                              self.pool == "cls", g_prefix=m.g_prefix(n)), self.pool)
                                 for m, i in zip(self.tasks, index)], dim=1)
        prompt_index = torch.stack(index, dim=1)  # [N, T, top_k]
        return embedding.float(), prompt_index[:, :, 0] if prompt_index.shape[2] == 1 else prompt_index, cls.float()


def share_backbone(base: DualPromptViT, model: DualPromptViT) -> DualPromptViT:
    """``model`` with its frozen modules and tensors replaced by ``base``'s (the same objects)."""
    for name in DualPromptViT.BACKBONE:
        setattr(model, name, getattr(base, name))
    return model


def load_tasks(checkpoints: dict[int, Path]) -> list[tuple[DualPromptViT, dict]]:
    """(model, checkpoint) of every task of ``checkpoints`` (task -> file, in output order), the
    models sharing the first one's backbone.

    One InputError names every task whose architecture or frozen tensors (patch embedding, class
    token, position embedding, blocks, final norm) differ from the first task's. Only one extra
    backbone is in memory at a time.
    """
    items = list(checkpoints.items())
    base, first = model_from_checkpoint(items[0][1])
    loaded, problems = [(base, first)], []
    for task, path in items[1:]:
        model, ckpt = model_from_checkpoint(path)
        differ = backbone_differences(base, model)
        if differ:
            more = f" and {len(differ) - _SHOWN} more" if len(differ) > _SHOWN else ""
            problems.append(f"task {task} ({path.name}): {', '.join(differ[:_SHOWN])}{more}")
        loaded.append((share_backbone(base, model), ckpt))
    if problems:
        raise InputError(f"cannot bundle: these checkpoints do not share task {items[0][0]}'s "
                         f"({items[0][1].name}) frozen backbone: " + "; ".join(problems))
    return loaded


def _describe(info: BundleInfo) -> str:
    c = info.common
    return (f"DualPrompt {c.model} bundle of tasks {', '.join(map(str, info.task_numbers))}: image "
            f"[N, 3, {c.input_size}, {c.input_size}] in [0, 1] -> embedding [N, {len(info.tasks)}, "
            f"{c.embedding_dim}] (task t at position t, pool {c.pool}, {c.precision}), prompt_index, and query "
            f"[N, {c.embedding_dim}], the frozen backbone's unprompted [CLS]. Prompt selection {c.selection}, "
            f"gather {c.gather}, query {c.query}.")


def export_bundle(checkpoints: dict[int, Path], out_path: str | Path, *, selection: str = "per-sample",
                  pool: str = "cls", precision: str = "fp32", opset: int = DEFAULT_OPSET, gather: str = "per-sample",
                  query: str = "cls") -> ExportResult:
    """Write the tasks of ``checkpoints`` (task number -> checkpoint, in output order) as one bundle to
    ``out_path``; refuses checkpoints that do not share one backbone. The file's weights must stay
    within 1.05 x the backbone plus every task's prompts and keys."""
    start = time.perf_counter()
    if precision not in PRECISIONS:
        raise InputError(f"--precision {precision}: a bundle is traced in {' or '.join(PRECISIONS)}; "
                         "quantise single-task files (export --task N --precision int8)")
    _check_options(selection, pool, precision, opset, gather, query)
    if not checkpoints:
        raise InputError("a bundle needs at least one task")
    loaded = load_tasks(checkpoints)  # refusals first: a refused bundle leaves no folder behind
    out_path = writable(out_path)
    try:
        info = BundleInfo(tuple(task_info(path, task, m.cfg, ckpt.get("args"), selection=selection, pool=pool,
                                          precision=precision, gather=gather, query=query)
                                for (task, path), (m, ckpt) in zip(checkpoints.items(), loaded)))
    except ValueError as e:
        raise InputError(f"cannot bundle: {e}") from None
    models = [m for m, _ in loaded]
    module = BundleExport(models, selection=selection, pool=pool, precision=precision, gather=gather,
                          query=query).eval()
    proto = trace_onnx(module, models[0].cfg.img_size, [s.name for s in BUNDLE_OUTPUTS], info.to_props(),
                       _describe(info), opset)
    return save_checked(proto, out_path, unique_parameter_bytes(module, precision), start)
