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
def reference_forward(model: DualPromptViT, x: torch.Tensor) -> torch.Tensor:
    """Pre-logits as the public reference computes them (batchwise_prompt off), including its e-prompt
    gather, which reshapes [layers, 2, B, k, len, H, hd] to [layers, B, 2, k*len, H, hd] without a
    permute (at B > 1 positions then read the [key; value] block in the wrong chunks). Written from the
    reference's description with the model's weights only."""
    sd = model.state_dict()
    cfg = model.cfg
    H, hd = cfg.num_heads, cfg.head_dim

    def run(x, prefixes):
        t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=cfg.patch_size)
        t = t.flatten(2).transpose(1, 2)
        t = torch.cat([sd["cls_token"].expand(len(x), -1, -1), t], 1) + sd["pos_embed"]
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

    q = run(x, {})  # the reference's second, unprompted model
    idx = (l2(sd["e_prompt.prompt_key"]) @ l2(q).t()).t().topk(cfg.top_k, dim=1).indices
    raw = sd["e_prompt.prompt"][:, :, idx]
    L, dual, B, k, length, _, _ = raw.shape
    batched = raw.reshape(L, B, dual, k * length, H, hd)  # the reference's defect for B > 1
    prefixes = {layer: sd["g_prompt"][j].unsqueeze(0).expand(B, -1, -1, -1, -1) for j, layer in enumerate(cfg.g_prompt_layers)}
    prefixes.update({layer: batched[j] for j, layer in enumerate(cfg.e_prompt_layers)})
    return run(x, prefixes)


def varied_images(n: int, seed: int = 0) -> torch.Tensor:
    """[n, 3, 32, 32] images in [0, 1] of many generated classes, so queries pick different prompts."""
    import numpy as np

    from dpcompat.common.synthetic import synthetic_images

    imgs = synthetic_images(np.arange(n) % 20, 20, seed)
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
