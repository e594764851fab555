"""What a checkpoint is: torchinfo's per-layer table of the model (output shape, parameters, trainable
or frozen) run on one image, parameter groups counted from the tensors, FLOPs per image."""
from __future__ import annotations

import argparse
from pathlib import Path

import torchinfo

from ..common.contract import POOLS
from ..infer.runtime.summary import dualprompt_flops
from ..infer.runtime.summary import parameter_groups
from ..train.checkpoint import model_from_checkpoint

# torchinfo's footer estimates (mult-adds of Linear/Conv layers only, memory) disagree with the
# FLOPs counted here (attention products included), so the table stops after the parameter totals.
_FOOTER_FROM = "Total mult-adds"


def _path(layer) -> str:
    names = []
    while layer is not None and layer.parent_info is not None:
        names.append(layer.var_name)
        layer = layer.parent_info
    return ".".join(reversed(names)) or "(model)"


def _json_args(args: argparse.Namespace | None) -> dict:
    plain = (str, int, float, bool, type(None), list, tuple)
    return {k: v for k, v in sorted(vars(args).items()) if isinstance(v, plain)} if args is not None else {}


def inspect_checkpoint(path: str | Path, *, depth: int = 3) -> dict:
    """Architecture, torchinfo table (modules ``depth`` levels deep), parameter groups, FLOPs per image
    (for both pools) and the checkpoint's ``epoch`` and ``args``. The backbone is frozen as in
    training, so the table's trainable column shows what DualPrompt trains."""
    model, ckpt = model_from_checkpoint(path)
    model.freeze_backbone()
    cfg = model.cfg
    stats = torchinfo.summary(model, input_size=(1, 3, cfg.img_size, cfg.img_size), depth=depth, verbose=0,
                              col_names=("output_size", "num_params", "trainable"), device="cpu",
                              row_settings=("depth", "var_names"))
    text = str(stats).splitlines()
    cut = next((i for i, line in enumerate(text) if line.startswith(_FOOTER_FROM)), len(text))
    rows = [{"layer": _path(layer), "type": layer.class_name, "depth": layer.depth, "output_shape": layer.output_size,
             "params": None if layer.is_recursive else layer.num_params, "trainable": layer.trainable,
             "repeated_call": layer.is_recursive} for layer in stats.summary_list]
    arch = cfg.asdict()
    return {"source": "checkpoint", "path": str(path), "architecture": arch, "table": "\n".join(text[:cut] + text[:1]),
            "layers": rows, "parameters": parameter_groups({n: p.numel() for n, p in model.named_parameters()}),
            "flops_per_image": {pool: dualprompt_flops(arch, pool) for pool in POOLS},
            "checkpoint": {"epoch": ckpt.get("epoch"), "args": _json_args(ckpt.get("args"))},
            "notes": ["the backbone runs twice per image (unprompted query pass, then the prompted pass) with "
                      "shared weights: the table lists both calls, '(recursive)' marks the second; FLOPs count "
                      "both passes as exported"]}
