"""Pretrained ViT backbones from timm (network or a local file) copied into a DualPromptViT.

Kept apart from the model: the model never downloads anything.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Optional

import torch

from ..common.errors import InputError
from .model import DualPromptConfig, DualPromptViT


class PretrainedUnavailable(InputError):
    """The pretrained weights could not be downloaded (hub unreachable, or the download failed): the one
    failure a caller may answer by training from a random backbone instead (the demo does)."""

_WAYS_OUT = ("pass --pretrained-weights PATH (timm .pth/.safetensors or the original .npz) "
             "or train from scratch with --no-pretrained")
# The reference's backbone is the original ImageNet-21k ViT-B/16 (`ViT-B_16.npz`).
_DEFAULT_TAGS = {"vit_base_patch16_224": "orig_in21k"}


def pretrained_name(model: str) -> str:
    """timm name with pretrained tag, e.g. ``vit_base_patch16_224.orig_in21k``."""
    if "." in model:
        return model
    return f"{model}.{_DEFAULT_TAGS.get(model, 'augreg_in21k')}"


def _timm_backbone(name: str, weights: Optional[Path], cfg: DualPromptConfig) -> torch.nn.Module:
    import timm

    kwargs = dict(num_classes=0, img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim,
                  depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio)
    if weights is None:
        return timm.create_model(name, pretrained=True, **kwargs)
    if weights.suffix == ".npz":
        vit = timm.create_model(name.split(".")[0], pretrained=False, **kwargs)
        vit.load_pretrained(str(weights))  # the original JAX/Flax checkpoint format
        return vit
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(weights)}, **kwargs)


HUB_HOST = "huggingface.co"


def hub_reachable(host: str = HUB_HOST, timeout: float = 3.0) -> bool:
    """Whether the weights hub answers at all: a quick probe, so an offline machine fails in seconds
    instead of spending a minute in download retries. ``HF_HUB_OFFLINE=1`` skips it (timm then reads
    huggingface_hub's cache only)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return True
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_pretrained_backbone(model: DualPromptViT, weights: Optional[str | Path] = None) -> str:
    """Copy pretrained backbone weights into ``model``; returns where they came from.

    ``weights``: a timm ``.pth``/``.safetensors`` file or the original ``.npz``; None downloads
    ``pretrained_name(model.cfg.model)`` through timm.
    """
    name = pretrained_name(model.cfg.model)
    path = Path(weights) if weights is not None else None
    if path is not None and not path.is_file():
        raise InputError(f"{path}: pretrained weights file not found")
    if path is None and not hub_reachable():
        raise PretrainedUnavailable(f"cannot download pretrained weights {name} ({HUB_HOST} is unreachable); "
                         f"{_WAYS_OUT}")
    try:
        vit = _timm_backbone(name, path, model.cfg)
    except InputError:
        raise
    except Exception as e:
        if path is not None:
            raise InputError(f"{path}: cannot load as {name} weights ({type(e).__name__}: {str(e).splitlines()[0]})") from None
        raise PretrainedUnavailable(
            f"cannot download pretrained weights {name} ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
            f"{_WAYS_OUT}") from None
    source = {k: v for k, v in vit.state_dict().items() if k.startswith(DualPromptViT.BACKBONE)}
    own = {k: v for k, v in model.state_dict().items() if k.startswith(DualPromptViT.BACKBONE)}
    wrong = sorted(k for k in own if k not in source or source[k].shape != own[k].shape)
    if wrong:
        raise InputError(f"{path or name}: pretrained weights do not fit {model.cfg.model} "
                         f"(e.g. {', '.join(wrong[:4])})")
    model.load_state_dict(source, strict=False)
    return str(path or name)
