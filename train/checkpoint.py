"""Checkpoints in the public reference's layout: ``<dir>/task{t}_checkpoint.pth`` holding
``{'model', 'optimizer', 'epoch', 'args'}`` with ``args`` an ``argparse.Namespace``.

Loading uses ``torch.load(weights_only=True)`` with only ``argparse.Namespace`` allowed besides
tensors and plain containers, so a checkpoint that carries any other object is refused before any of
its code runs. Every loader reads through :func:`load_checkpoint`, which also refuses weights the model
cannot hold (a dtype other than float32, float16 or bfloat16; the half precisions are widened to
float32 there) and weights holding NaN or Inf (a diverged training run): no accuracy, export or
resumed training is ever computed from them.
"""
from __future__ import annotations

import argparse
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterable, Optional

import torch

from ..common.atomic import atomic_file
from ..common.errors import InputError
from .model import DualPromptConfig, DualPromptViT
from .reference_args import check_supported, reference_args

CHECKPOINT_RE = re.compile(r"^task(\d+)_checkpoint\.pth$")
DEFAULT_CHECKPOINT_DIR = "output/checkpoint"
# Where checkpoints usually are below a working directory: train's default output and the demo's default
# workdir; <any folder>/output/checkpoint (a demo's --workdir, a train --output-dir) is looked at as well.
KNOWN_CHECKPOINT_DIRS = (DEFAULT_CHECKPOINT_DIR, "demo-run/output/checkpoint")
# Weights the model holds: float32, and the half precisions, widened to float32 exactly when loaded.
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_SHOWN = 6  # tensors named in one refusal


def checkpoint_path(checkpoint_dir: str | Path, task: int) -> Path:
    return Path(checkpoint_dir) / f"task{task}_checkpoint.pth"


def list_checkpoints(checkpoint_dir: str | Path) -> dict[int, Path]:
    """Task number (1-based) -> checkpoint file, for every ``task{N}_checkpoint.pth`` in the folder."""
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return {}
    found = {int(m.group(1)): p for p in folder.iterdir() if (m := CHECKPOINT_RE.match(p.name))}
    return dict(sorted(found.items()))


def distinct_folders(folders: Iterable[str | Path]) -> list[Path]:
    """``folders`` in order, each resolved location once (the first spelling of it kept)."""
    seen, kept = set(), []
    for folder in map(Path, folders):
        where = folder.resolve()
        if where not in seen:
            seen.add(where)
            kept.append(folder)
    return kept


def nearby_checkpoint_dirs(name: Optional[str] = None, exclude: Iterable[str | Path] = ()) -> list[Path]:
    """Folders below the working directory that hold task checkpoints (the file ``name``, when given):
    :data:`KNOWN_CHECKPOINT_DIRS`, then ``*/output/checkpoint``; the ``exclude`` locations left out."""
    skip = {Path(f).resolve() for f in exclude}
    candidates = [*KNOWN_CHECKPOINT_DIRS, *sorted(str(p) for p in Path().glob("*/output/checkpoint"))]
    return [f for f in distinct_folders(candidates) if f.resolve() not in skip and
            ((f / name).is_file() if name else bool(list_checkpoints(f)))]


def pointer_to(folders: list[Path], what: str = "task checkpoints are") -> str:
    """``; task checkpoints are in F: pass --checkpoint-dir F`` for the first of ``folders`` (the
    others named too), or "" when there is none."""
    if not folders:
        return ""
    others = f" (also in {', '.join(map(str, folders[1:_SHOWN]))})" if len(folders) > 1 else ""
    return f"; {what} in {folders[0]}{others}: pass --checkpoint-dir {folders[0]}"


def checkpoint_folder(checkpoint_dir: str | Path) -> Path:
    """``--checkpoint-dir`` as a folder that exists; an InputError saying so otherwise, naming where a
    relative folder was looked for and any folder nearby that holds checkpoints."""
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        reason = "not a folder" if folder.exists() else "no such folder"
        where = "" if folder.is_absolute() else f" in {Path.cwd()}"
        raise InputError(f"--checkpoint-dir {checkpoint_dir}: {reason}{where}"
                         f"{pointer_to(nearby_checkpoint_dirs(exclude=[folder]))}")
    return folder


def find_checkpoints(checkpoint_dir: str | Path) -> dict[int, Path]:
    """:func:`list_checkpoints` of an existing folder that holds at least one."""
    found = list_checkpoints(checkpoint_folder(checkpoint_dir))
    if not found:
        raise InputError(f"{checkpoint_dir}: no task<N>_checkpoint.pth files"
                         f"{pointer_to(nearby_checkpoint_dirs(exclude=[checkpoint_dir]))}")
    return found


def config_to_args(cfg: DualPromptConfig, **training: Any) -> argparse.Namespace:
    """Every field of the reference's ``args`` (:mod:`.reference_args`), with this architecture's
    values, the training settings given and the explicit widths (``embed_dim``, ``depth``,
    ``num_heads``, ``patch_size``) that the reference derives from the model name."""
    return argparse.Namespace(**reference_args(
        model=cfg.model, input_size=cfg.img_size, nb_classes=cfg.num_classes, size=cfg.pool_size,
        length=cfg.prompt_length, top_k=cfg.top_k, g_prompt_length=cfg.g_prompt_length,
        g_prompt_layer_idx=list(cfg.g_prompt_layers), e_prompt_layer_idx=list(cfg.e_prompt_layers),
        embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads,
        patch_size=cfg.patch_size, mlp_ratio=cfg.mlp_ratio, **training))


# Reference options whose other values change what the model computes and are not implemented here.
def config_from_args(args: argparse.Namespace, **fallback: Any) -> DualPromptConfig:
    """Architecture from a checkpoint's ``args``; ``fallback`` supplies what the args lack.

    ``ValueError`` for values out of bounds (see :class:`DualPromptConfig`) and for reference options
    this implementation does not compute (``embedding_key`` other than ``cls``, prompt-tuning, ...)."""
    a = vars(args) if args is not None else {}
    check_supported(a)

    def get(key, name):
        return a[key] if a.get(key) is not None else fallback.get(name)

    model = get("model", "model") or "vit_base_patch16_224"
    if not isinstance(model, str):
        raise ValueError(f"args.model {model!r} is not a model name")
    layers = {k: tuple(v) if v is not None else None
              for k, v in (("e_prompt_layers", get("e_prompt_layer_idx", "e_prompt_layers")),
                           ("g_prompt_layers", get("g_prompt_layer_idx", "g_prompt_layers")))}
    return DualPromptConfig.from_name(
        model, img_size=get("input_size", "img_size"), num_classes=get("nb_classes", "num_classes"),
        pool_size=get("size", "pool_size"), prompt_length=get("length", "prompt_length"),
        top_k=get("top_k", "top_k"), g_prompt_length=get("g_prompt_length", "g_prompt_length"),
        embed_dim=get("embed_dim", "embed_dim"), depth=get("depth", "depth"),
        num_heads=get("num_heads", "num_heads"), patch_size=get("patch_size", "patch_size"),
        mlp_ratio=get("mlp_ratio", "mlp_ratio"), **layers)


def provenance_from_args(args: Optional[argparse.Namespace]) -> dict[str, str]:
    """The ``provenance`` a dpcompat run records in ``args`` ({} when absent: trained elsewhere).

    ``ValueError`` when it is not a small object of strings."""
    found = getattr(args, "provenance", None)
    if found is None:
        return {}
    if not isinstance(found, dict) or len(found) > 16 or \
            not all(isinstance(k, str) and isinstance(v, str) and len(v) <= 500 for k, v in found.items()):
        raise ValueError("args.provenance is not an object of short strings")
    return dict(found)


def save_checkpoint(path: str | Path, model: DualPromptViT, optimizer: Optional[torch.optim.Optimizer],
                    epoch: int, args: argparse.Namespace) -> Path:
    """Write a reference-layout checkpoint atomically (temporary file, then rename)."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict() if optimizer else {},
             "epoch": epoch, "args": args}
    with atomic_file(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint safely; any problem is an ``InputError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint")
    try:
        # torch's warnings (e.g. on an unusual pickle protocol) would print above our one-line error
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        detail = next((ln for ln in first if "GLOBAL" in ln or "Unsupported" in ln), first[0] if first else "")
        raise InputError(f"{path}: refused, it carries objects other than tensors and argparse.Namespace "
                         f"and none of its code was run ({detail.strip()})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"{path}: not a readable checkpoint (truncated or corrupt: {detail})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise InputError(f"{path}: not a DualPrompt checkpoint (no 'model' state dict)")
    if ckpt.get("args") is not None and not isinstance(ckpt["args"], argparse.Namespace):
        raise InputError(f"{path}: 'args' is a {type(ckpt['args']).__name__}, expected argparse.Namespace")
    try:
        provenance_from_args(ckpt.get("args"))
    except ValueError as e:
        raise InputError(f"{path}: {e}") from None
    ckpt["model"] = checked_weights(ckpt["model"], path)
    return ckpt


def _listed(items: list[str]) -> str:
    return ", ".join(items[:_SHOWN]) + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def checked_weights(state: dict, source: str | Path) -> dict:
    """``state`` with every tensor in float32 (float16 and bfloat16 widened, exactly).

    One InputError naming ``source`` and every tensor of another dtype (integer, complex, bool, float64,
    ...: the model would cast it silently) or layout, else every tensor that holds NaN or Inf. Each
    tensor is read once by ``torch.isfinite``. Values that are not tensors are left to
    :func:`check_state_dict`."""
    tensors = {k: v for k, v in state.items() if torch.is_tensor(v)}
    wrong = [f"{k} is {str(v.dtype).removeprefix('torch.')}" if v.dtype not in WEIGHT_DTYPES else f"{k} is {v.layout}"
             for k, v in tensors.items() if v.dtype not in WEIGHT_DTYPES or v.layout != torch.strided]
    if wrong:
        raise InputError(f"{source}: weights of a type the model does not hold ({_listed(wrong)}); they must be "
                         "dense float32 tensors (float16 and bfloat16 are widened to float32)")
    widened = {k: v.float() if torch.is_tensor(v) else v for k, v in state.items()}
    bad = []
    for k, v in tensors.items():
        finite = torch.isfinite(widened[k])
        if not bool(finite.all()):
            bad.append(f"{k} ({v.numel() - int(finite.sum()):,} of {v.numel():,} values)")
    if bad:
        raise InputError(f"{source}: NaN or Inf weights in {_listed(bad)}: a diverged training run, not a model "
                         "(train again with a lower --lr; train --resume continues from the last finite checkpoint "
                         "once this one is removed)")
    return widened


def check_state_dict(model: DualPromptViT, state: dict, source: str | Path) -> None:
    """Raise one ``InputError`` listing every missing, unexpected or wrongly shaped key."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = []
    for k, shape in expected.items():
        if k not in state:
            problems.append(f"{k} missing")
        elif not torch.is_tensor(state[k]) or tuple(state[k].shape) != shape:
            got = tuple(state[k].shape) if torch.is_tensor(state[k]) else type(state[k]).__name__
            problems.append(f"{k} is {got}, the architecture needs {shape}")
    problems += [f"{k} unexpected" for k in state if k not in expected]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise InputError(f"{source}: weights do not fit the architecture ({model.cfg.model}, "
                         f"dim {model.cfg.embed_dim}, depth {model.cfg.depth}): {shown}")


def model_from_checkpoint(path: str | Path, **fallback: Any) -> tuple[DualPromptViT, dict]:
    """Build the model the checkpoint describes (its ``args``, else ``fallback``) and load it strictly."""
    ckpt = load_checkpoint(path)
    try:
        cfg = config_from_args(ckpt.get("args"), **fallback)
    except (ValueError, TypeError) as e:
        raise InputError(f"{path}: {e}") from None
    with torch.device("meta"):  # shapes only: a file's args cannot make us allocate what its weights lack
        check_state_dict(DualPromptViT(cfg), ckpt["model"], path)
    model = DualPromptViT(cfg)
    model.load_state_dict(ckpt["model"], strict=True)  # float32 already: load_checkpoint widened it
    return model.eval(), ckpt
