"""Tiny DualPrompt configurations and datasets for tests (fast on 2 CPU cores)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dpcompat.train.model import DualPromptConfig, DualPromptViT

TINY_ARCH = dict(model="vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=6, num_heads=4)
TINY_CLI = ["--model", "vit_tiny_patch16_224", "--input-size", "32", "--patch-size", "8", "--embed-dim", "64",
            "--depth", "6", "--num-heads", "4", "--no-pretrained", "--workers", "0", "--quiet"]


def tiny_config(**overrides) -> DualPromptConfig:
    return DualPromptConfig.from_name(**{**TINY_ARCH, "num_classes": 10, **overrides})


def tiny_model(seed: int = 0, **overrides) -> DualPromptViT:
    torch.manual_seed(seed)
    return DualPromptViT(tiny_config(**overrides)).eval()


def reference_layout_keys(depth: int) -> list[str]:
    """The state_dict keys of the public reference's checkpoints (``torch.save({'model': state_dict, ...})``
    of its ``VisionTransformer`` with g-/e-prompts), written out independently."""
    keys = ["cls_token", "pos_embed", "g_prompt", "patch_embed.proj.weight", "patch_embed.proj.bias",
            "e_prompt.prompt", "e_prompt.prompt_key", "norm.weight", "norm.bias", "head.weight", "head.bias"]
    for i in range(depth):
        for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys += [f"blocks.{i}.{part}.weight", f"blocks.{i}.{part}.bias"]
    return keys


@torch.no_grad()
def reference_outputs(model: DualPromptViT, x: torch.Tensor, *, batchwise: bool = False, query: str = "cls",
                      task_id=None) -> dict:
    """``pre_logits``, ``logits`` and ``prompt_idx`` as the public reference computes them, written from its
    description with the model's weights only: its e-prompt gather, which reshapes
    [layers, 2, B, k, len, H, hd] to [layers, B, 2, k*len, H, hd] without a permute (at B > 1 positions
    then read the [key; value] block in the wrong chunks); ``batchwise`` its batchwise_prompt (torch.unique
    of the indices with counts, padded to the pool size with the smallest index and count 0, torch.topk of
    the counts); ``query="notebook"`` its fallback without query features (max over the embedded tokens);
    ``task_id`` its training prompt mask."""
    sd = model.state_dict()
    cfg = model.cfg
    H, hd = cfg.num_heads, cfg.head_dim

    def embedded(x):
        t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=cfg.patch_size)
        t = t.flatten(2).transpose(1, 2)
        return torch.cat([sd["cls_token"].expand(len(x), -1, -1), t], 1) + sd["pos_embed"]

    def run(x, prefixes):
        t = embedded(x)
        for i in range(cfg.depth):
            p = f"blocks.{i}."
            h = F.layer_norm(t, (cfg.embed_dim,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-6)
            B, N, C = h.shape
            qkv = F.linear(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"]).reshape(B, N, 3, H, hd)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            if prefixes.get(i) is not None:
                pr = prefixes[i].permute(1, 0, 3, 2, 4)  # [2, B, H, len, hd]
                k, v = torch.cat([pr[0], k], 2), torch.cat([pr[1], v], 2)
            a = (q @ k.transpose(-2, -1) * hd ** -0.5).softmax(-1)
            t = t + F.linear((a @ v).transpose(1, 2).reshape(B, N, C), sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
            h = F.layer_norm(t, (C,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-6)
            h = F.linear(F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])), sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
            t = t + h
        return F.layer_norm(t, (cfg.embed_dim,), sd["norm.weight"], sd["norm.bias"], 1e-6)[:, 0]

    def l2(v):
        return v * torch.rsqrt(torch.clamp((v ** 2).sum(-1, keepdim=True), min=1e-12))

    q = run(x, {}) if query == "cls" else embedded(x).max(dim=1)[0]  # the second, unprompted model, or the fallback
    idx = (l2(sd["e_prompt.prompt_key"]) @ l2(q).t()).t().topk(cfg.top_k, dim=1).indices
    if batchwise:
        idx = reference_batchwise(idx, cfg.pool_size, cfg.top_k)
    if task_id is not None and (task_id + 1) * cfg.top_k <= cfg.pool_size:
        idx = torch.arange(task_id * cfg.top_k, (task_id + 1) * cfg.top_k).unsqueeze(0).expand(len(x), -1)
    raw = sd["e_prompt.prompt"][:, :, idx]
    L, dual, B, k, length, _, _ = raw.shape
    batched = raw.reshape(L, B, dual, k * length, H, hd)  # the reference's defect for B > 1
    prefixes = {layer: sd["g_prompt"][j].unsqueeze(0).expand(B, -1, -1, -1, -1) for j, layer in enumerate(cfg.g_prompt_layers)}
    prefixes.update({layer: batched[j] for j, layer in enumerate(cfg.e_prompt_layers)})
    pre_logits = run(x, prefixes)
    return {"pre_logits": pre_logits, "logits": F.linear(pre_logits, sd["head.weight"], sd["head.bias"]),
            "prompt_idx": idx}


def reference_batchwise(idx: torch.Tensor, pool_size: int, top_k: int) -> torch.Tensor:
    """The reference's batchwise_prompt, step by step as its prompt.py does it."""
    prompt_id, id_counts = torch.unique(idx, return_counts=True, sorted=True)
    if prompt_id.shape[0] < pool_size:
        prompt_id = torch.cat([prompt_id, torch.full((pool_size - prompt_id.shape[0],), torch.min(idx.flatten()))])
        id_counts = torch.cat([id_counts, torch.full((pool_size - id_counts.shape[0],), 0)])
    _, major_idx = torch.topk(id_counts, k=top_k)
    return prompt_id[major_idx].expand(idx.shape[0], -1).contiguous()


def reference_forward(model: DualPromptViT, x: torch.Tensor, **modes) -> torch.Tensor:
    """The reference's pre-logits (see :func:`reference_outputs`)."""
    return reference_outputs(model, x, **modes)["pre_logits"]


def varied_images(n: int, seed: int = 0) -> torch.Tensor:
    """[n, 3, 32, 32] images in [0, 1] of many generated classes, so queries pick different prompts."""
    import numpy as np

    from dpcompat.common.synthetic import synthetic_images

    imgs = synthetic_images(np.arange(n) % 20, 20, seed)
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
