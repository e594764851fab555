"""DualPrompt on a ViT built from timm 1.x layers, with the public reference's parameter layout.

One backbone serves two passes: the unprompted query pass q(x) ([CLS] after the final norm) picks
e-prompts by cosine similarity with the key pool; the prompted pass prepends g-prompt and e-prompt
prefixes to the keys and values of chosen layers (prefix-tuning). Unlike the reference, every sample
gathers its own e-prompt, so an embedding does not depend on the batch it is computed in.

Two behaviours of the public reference are available as explicit modes, for reproducing its numbers:
``gather="reference"`` (its e-prompt gather, which swaps key and value roles by batch position, and its
batchwise count ranking) and ``query="notebook"`` (the original study's notebook, which picked prompts by
the element-wise max over the embedded tokens instead of the frozen [CLS]).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field, fields, replace
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp, PatchEmbed, trunc_normal_

from ..common.contract import GATHERS, POOLS, QUERIES, SELECTIONS, check_choice


# Widths of the timm ViT families, keyed by the name's size word.
_VIT_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}


@dataclass(frozen=True)
class DualPromptConfig:
    """Architecture of a DualPrompt ViT; field defaults are the reference's `cifar100_dualprompt`."""

    model: str = "vit_base_patch16_224"
    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    num_classes: int = 100
    pool_size: int = 10
    prompt_length: int = 5
    top_k: int = 1
    e_prompt_layers: tuple[int, ...] = (2, 3, 4)
    g_prompt_length: int = 5
    g_prompt_layers: tuple[int, ...] = field(default=(0, 1))

    @classmethod
    def from_name(cls, model: str, **overrides) -> "DualPromptConfig":
        """Config for a timm ViT name such as ``vit_tiny_patch16_224``, with explicit overrides."""
        parts = model.split(".")[0].split("_")
        try:
            size = next(p for p in parts if p in _VIT_SIZES)
            patch = int(next(p for p in parts if p.startswith("patch"))[5:])
            img = int(parts[-1])
        except (StopIteration, ValueError):
            raise ValueError(f"unsupported model name {model!r}: expected vit_<tiny|small|base|large>_patch<P>_<size>")
        dim, depth, heads = _VIT_SIZES[size]
        base = cls(model=model.split(".")[0], img_size=img, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads)
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})

    def __post_init__(self):
        problems = _bound_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        if self.img_size % self.patch_size:
            raise ValueError(f"patch_size {self.patch_size} does not divide input size {self.img_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        layers = set(self.e_prompt_layers) | set(self.g_prompt_layers)
        if set(self.e_prompt_layers) & set(self.g_prompt_layers) or any(not 0 <= i < self.depth for i in layers):
            raise ValueError(f"prompt layers g={list(self.g_prompt_layers)} e={list(self.e_prompt_layers)} "
                             f"must be distinct layers of a {self.depth}-block model")
        if not 1 <= self.top_k <= self.pool_size:
            raise ValueError(f"top_k {self.top_k} must be between 1 and the pool size {self.pool_size}")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    def asdict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# Upper bounds, far above any ViT in use, so a config read from a file cannot ask for unbounded memory.
_INT_BOUNDS = {"img_size": 4096, "patch_size": 4096, "embed_dim": 16_384, "depth": 1024, "num_heads": 1024,
               "num_classes": 1_000_000, "pool_size": 10_000, "prompt_length": 10_000, "top_k": 10_000,
               "g_prompt_length": 10_000}
_MAX_MLP_RATIO = 64


def _bound_problems(cfg: DualPromptConfig) -> list[str]:
    out = [f"{name} {getattr(cfg, name)!r} is not an integer from 1 to {high}" for name, high in _INT_BOUNDS.items()
           if not isinstance(getattr(cfg, name), int) or isinstance(getattr(cfg, name), bool)
           or not 1 <= getattr(cfg, name) <= high]
    ratio = cfg.mlp_ratio
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0 < ratio <= _MAX_MLP_RATIO:
        out.append(f"mlp_ratio {ratio!r} is not a number in (0, {_MAX_MLP_RATIO}]")  # NaN fails the comparison too
    for name in ("e_prompt_layers", "g_prompt_layers"):
        layers = getattr(cfg, name)
        if not isinstance(layers, tuple) or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
            out.append(f"{name} {layers!r} is not a list of block indices")
    if not cfg.e_prompt_layers:
        out.append("e_prompt_layers is empty: DualPrompt needs at least one e-prompt layer")
    return out


def l2_normalize(x: torch.Tensor, dim: int = -1, eps: float = 1e-12) -> torch.Tensor:
    """The reference's normalisation: x / sqrt(max(sum x^2, eps))."""
    return x * torch.rsqrt(torch.clamp(x.pow(2).sum(dim=dim, keepdim=True), min=eps))


class PrefixAttention(nn.Module):
    """Multi-head self-attention; an optional prefix [B, 2, L, heads, head_dim] is prepended to keys and values."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, prefix: Optional[torch.Tensor] = None, cls_only: bool = False) -> torch.Tensor:
        """[B, N, C] -> [B, N, C]; with ``cls_only`` only the first token attends: [B, 1, C]."""
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        if cls_only:
            q = q[:, :, :1]
        if prefix is not None:
            key_prefix, value_prefix = prefix.permute(1, 0, 3, 2, 4).unbind(0)  # each [B, heads, L, head_dim]
            k = torch.cat([key_prefix, k], dim=2)
            v = torch.cat([value_prefix, v], dim=2)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, q.shape[2], C))


class Block(nn.Module):
    """Pre-norm transformer block (timm's layout and parameter names) with an optional attention prefix."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = PrefixAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor, prefix: Optional[torch.Tensor] = None, cls_only: bool = False) -> torch.Tensor:
        """With ``cls_only`` the output holds the first token alone (keys and values still see every token)."""
        x = (x[:, :1] if cls_only else x) + self.attn(self.norm1(x), prefix, cls_only)
        return x + self.mlp(self.norm2(x))


class EPrompt(nn.Module):
    """The e-prompt pool: ``prompt`` [layers, 2, pool, length, heads, head_dim] and ``prompt_key`` [pool, dim]."""

    def __init__(self, cfg: DualPromptConfig):
        super().__init__()
        self.top_k = cfg.top_k
        self.pool_size = cfg.pool_size
        shape = (len(cfg.e_prompt_layers), 2, cfg.pool_size, cfg.prompt_length, cfg.num_heads, cfg.head_dim)
        self.prompt = nn.Parameter(torch.empty(shape).uniform_(-1, 1))
        self.prompt_key = nn.Parameter(torch.empty(cfg.pool_size, cfg.embed_dim).uniform_(-1, 1))

    def select(self, similarity: torch.Tensor, selection: str = "per-sample") -> torch.Tensor:
        """Prompt indices [B, top_k] from similarities [B, pool].

        ``per-sample``: each sample's own top_k. ``batchwise`` (the reference's inference): every
        sample gets the batch's most frequent indices; count ties go to the lower index.
        """
        idx = similarity.topk(self.top_k, dim=1).indices
        if selection == "per-sample":
            return idx
        check_choice("selection", selection, SELECTIONS)
        counts = F.one_hot(idx.flatten(), self.pool_size).sum(0)
        # Integer keys without ties, so torch and ONNX TopK agree on the order.
        keys = counts * self.pool_size + torch.arange(self.pool_size - 1, -1, -1, device=counts.device)
        major = keys.topk(self.top_k).indices
        return major.unsqueeze(0).expand(similarity.shape[0], -1)

    def gather(self, idx: torch.Tensor, *, gather: str = "per-sample") -> torch.Tensor:
        """Prefixes [layers, B, 2, top_k * length, heads, head_dim] for indices [B, top_k].

        ``per-sample``: sample b gets the (key, value) parts of its own prompts. ``reference``: the
        public reference's gather, which reshapes [layers, 2, B, ...] to [layers, B, 2, ...] without a
        permute, so position b reads chunks 2b and 2b+1 of the [key block; value block] layout: with
        one prompt per batch, positions < B/2 get (key, key), positions >= B/2 (value, value) and the
        middle one of an odd B (key, value); with several prompts a position also reads other
        positions' prompts. At B = 1 both are the same.
        """
        check_choice("gather", gather, GATHERS)
        p = self.prompt[:, :, idx]  # [layers, 2, B, top_k, length, heads, head_dim]
        layers, _, B, k, length, heads, hd = p.shape
        if gather == "per-sample":
            p = p.permute(0, 2, 1, 3, 4, 5, 6)
        return p.reshape(layers, B, 2, k * length, heads, hd)

    def reference_batchwise(self, idx: torch.Tensor) -> torch.Tensor:
        """The reference's batchwise choice [B, top_k] from per-sample indices [B, top_k], on the very
        arrays its prompt.py ranks: the sorted distinct indices with their counts (``torch.unique``),
        padded to the pool size with the smallest index and a count of 0, then ``torch.topk`` of the
        counts. Built from fixed-size operations so that it traces to ONNX; a tie between equal counts
        breaks as ``torch.topk`` breaks it on this device and torch version (ONNX TopK: the lower index).
        """
        flat = idx.flatten()
        counts = F.one_hot(flat, self.pool_size).sum(0)
        present = counts > 0
        ids = torch.arange(self.pool_size, device=idx.device)
        order = torch.argsort(torch.where(present, ids, ids + self.pool_size))  # present ids ascending, then absent
        prompt_id = torch.where(present[order], order, flat.min())
        major = counts[order].topk(self.top_k).indices
        return prompt_id[major].unsqueeze(0).expand(idx.shape[0], -1)


class DualPromptViT(nn.Module):
    """ViT + DualPrompt. ``state_dict()`` keys and shapes equal the public reference's."""

    def __init__(self, cfg: DualPromptConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.embed_dim
        self.patch_embed = PatchEmbed(img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=3, embed_dim=D)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, D))
        self.g_prompt = nn.Parameter(torch.empty(
            len(cfg.g_prompt_layers), 2, cfg.g_prompt_length, cfg.num_heads, cfg.head_dim).uniform_(-1, 1))
        self.e_prompt = EPrompt(cfg)
        self.blocks = nn.ModuleList([Block(D, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(D, eps=1e-6)
        self.head = nn.Linear(D, cfg.num_classes)
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    BACKBONE = ("patch_embed", "cls_token", "pos_embed", "blocks", "norm")

    def freeze_backbone(self) -> None:
        """Freeze what the reference freezes; g_prompt, e_prompt and head stay trainable."""
        for name, p in self.named_parameters():
            p.requires_grad_(not name.startswith(self.BACKBONE))

    def embedded_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[CLS] and patch tokens [B, 1 + patches, dim] after the position embedding, before the first
        block, for images [B, 3, H, W]; the same for every pass (a bundle computes them once). Tokens
        [B, 1 + patches, dim] pass through unchanged."""
        if x.dim() == 3:
            return x
        x = self.patch_embed(x)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed

    def g_prefix(self, batch: int) -> torch.Tensor:
        """The g-prompt prefixes [g_layers, batch, 2, length, heads, head_dim], the same for every sample."""
        return self.g_prompt.unsqueeze(1).expand(-1, batch, -1, -1, -1, -1)

    def tokens(self, x: torch.Tensor, e_prefix: Optional[torch.Tensor] = None, cls_only: bool = False, *,
               g_prefix: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Tokens [B, 1 + patches, dim] after the final norm; unprompted when ``e_prefix`` is None.

        ``x``: images [B, 3, H, W], or their :meth:`embedded_tokens`. ``g_prefix``: per-sample
        g-prompts laid out as :meth:`g_prefix` (default: this model's own for every sample), so one
        batch can hold several tasks' prompted passes. ``cls_only``: the last block computes the
        [CLS] token alone and the result is [B, 1, dim] (what a [CLS] readout needs, for about
        1/depth less work).
        """
        x = self.embedded_tokens(x)
        if e_prefix is not None and g_prefix is None:
            g_prefix = self.g_prefix(x.shape[0])
        g_layers, e_layers = self.cfg.g_prompt_layers, self.cfg.e_prompt_layers
        for i, block in enumerate(self.blocks):
            prefix = None
            if e_prefix is not None:
                if i in g_layers:
                    prefix = g_prefix[g_layers.index(i)]
                elif i in e_layers:
                    prefix = e_prefix[e_layers.index(i)]
            x = block(x, prefix, cls_only and i == len(self.blocks) - 1)
        return self.norm(x)

    def query(self, x: torch.Tensor, *, query: str = "cls") -> torch.Tensor:
        """q(x) [B, dim]. ``cls``: [CLS] of the unprompted backbone after the final norm (the paper, and
        the reference when given the query features). ``notebook``: the element-wise max over all
        embedded tokens, [CLS] row included, before the first block (the reference's fallback when no
        query features are passed, which the original study's notebook ran)."""
        check_choice("query", query, QUERIES)
        if query == "notebook":
            return self.embedded_tokens(x).max(dim=1).values
        return self.tokens(x, cls_only=True)[:, 0]

    def prompt_similarity(self, query: torch.Tensor) -> torch.Tensor:
        """Cosine [B, pool] between queries [B, dim] and the prompt keys, always in float32, so the
        prompt choice does not hinge on fp16/bf16 rounding of values near 1."""
        with torch.autocast(query.device.type, enabled=False) if torch.is_autocast_enabled(query.device.type) else nullcontext():
            return l2_normalize(query.float()) @ l2_normalize(self.e_prompt.prompt_key.float()).t()

    def select_prompts(self, similarity: torch.Tensor, selection: str = "per-sample",
                       task_id: Optional[int] = None, *, gather: str = "per-sample") -> torch.Tensor:
        """Prompt indices [B, top_k]. ``task_id`` (training) forces task t's own prompts (the
        reference's prompt mask) while the pool has room for them; else ``selection`` picks, with
        ``gather="reference"`` batchwise ranks the counts as the reference does
        (:meth:`EPrompt.reference_batchwise`)."""
        k = self.e_prompt.top_k
        if task_id is not None and (task_id + 1) * k <= self.e_prompt.pool_size:
            return torch.arange(task_id * k, (task_id + 1) * k, device=similarity.device).expand(similarity.shape[0], -1)
        check_choice("gather", gather, GATHERS)
        if gather == "reference" and selection == "batchwise":
            return self.e_prompt.reference_batchwise(self.e_prompt.select(similarity.detach()))
        return self.e_prompt.select(similarity.detach(), selection)

    def prompted_tokens(self, x: torch.Tensor, prompt_index: torch.Tensor, *, cls_only: bool = False,
                        gather: str = "per-sample") -> torch.Tensor:
        """Tokens after the final norm of the pass prompted with e-prompts ``prompt_index`` [B, top_k]
        (``gather``: see :meth:`EPrompt.gather`)."""
        return self.tokens(x, self.e_prompt.gather(prompt_index, gather=gather), cls_only=cls_only)

    @staticmethod
    def pool_tokens(tokens: torch.Tensor, pool: str) -> torch.Tensor:
        """The embedding [B, dim] of tokens [B, N, dim]: 'cls' the first token, 'mean' the token mean."""
        check_choice("pool", pool, POOLS)
        return tokens[:, 0] if pool == "cls" else tokens.mean(dim=1)

    def embed(self, x: torch.Tensor, selection: str = "per-sample", pool: str = "cls", *,
              gather: str = "per-sample", query: str = "cls",
              query_features: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """What an export computes: (embedding [B, dim], prompt_index [B, top_k]) for images [B, 3, H, W].

        The last block of each pass computes only what the readout needs (``cls_only``).
        ``query_features``: :meth:`query` of ``x`` in mode ``query`` when already computed (the tasks of
        one run share it: the backbone is frozen); None computes it."""
        q = self.query(x, query=query) if query_features is None else query_features
        idx = self.select_prompts(self.prompt_similarity(q), selection, gather=gather)
        return self.pool_tokens(self.prompted_tokens(x, idx, cls_only=pool == "cls", gather=gather), pool), idx

    def forward(self, x: torch.Tensor, task_id: Optional[int] = None, selection: str = "per-sample",
                pool: str = "cls", *, gather: str = "per-sample", query: str = "cls",
                query_features: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """Logits, embedding and prompt choice for images [B, 3, H, W] in [0, 1] (training and evaluation).

        Returns ``logits`` [B, classes], ``embedding`` [B, dim] (see :meth:`pool_tokens`),
        ``prompt_idx`` [B, top_k] and ``reduce_sim``, the mean cosine between each query and its
        chosen keys (the pull constraint's term). ``task_id``: see :meth:`select_prompts`;
        ``gather``: :meth:`EPrompt.gather`; ``query``: :meth:`query`; ``query_features``: see :meth:`embed`.
        """
        q = query_features
        if q is None:
            with torch.no_grad():
                q = self.query(x, query=query)
        similarity = self.prompt_similarity(q)
        idx = self.select_prompts(similarity, selection, task_id, gather=gather)
        reduce_sim = similarity.gather(1, idx).sum() / x.shape[0]
        tokens = self.prompted_tokens(x, idx, cls_only=pool == "cls", gather=gather)
        return {"logits": self.head(tokens[:, 0]), "embedding": self.pool_tokens(tokens, pool),
                "prompt_idx": idx, "reduce_sim": reduce_sim}
