"""Feature distillation between consecutive tasks (the original study's experiment 2, and BCT).

While task t trains, f_{t-1} is a frozen copy of the model after task t-1 (its prompts, keys and head
frozen) and f_t the model being trained; f is the retrieval embedding (what an export outputs).

- ``cosine``: λ · mean over the batch of (1 − cos(f_t(x), f_{t-1}(x))), the study's loss.
- ``bct``: λ · BCT's influence loss (Shen et al., CVPR 2020): cross-entropy of the previous model's
  classifier applied to the new embedding, over the classes seen so far with the other logits set to
  −inf as in training. The previous classifier never trained rows for task t's classes; as BCT does
  for new classes, those rows are synthesised as the mean f_{t-1} embedding of each class over the
  task's training data (bias 0).
"""
from __future__ import annotations

import copy
from typing import Iterable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..common.contract import DISTILL_KINDS
from .model import DualPromptViT


def cosine_distillation(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Mean over rows of 1 − cos(new_b, old_b) for embeddings [B, D]; no gradient flows into ``old``."""
    return (1.0 - F.cosine_similarity(new.float(), old.detach().float(), dim=1)).mean()


def influence_loss(new: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, labels: torch.Tensor,
                   seen: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the frozen classifier (``weight`` [C, D], ``bias`` [C]) on embeddings ``new``
    [B, D] for ``labels`` [B], logits of classes outside ``seen`` (class indices) set to −inf."""
    logits = F.linear(new.float(), weight.detach().float(), bias.detach().float())
    outside = torch.ones(logits.shape[1], dtype=torch.bool, device=logits.device)
    outside[seen] = False
    return F.cross_entropy(logits.masked_fill(outside, float("-inf")), labels)


class Distiller:
    """The distillation term of task t, from the model after task t-1 (copied, frozen, evaluation mode)."""

    def __init__(self, previous: DualPromptViT, kind: str, *, selection: str = "per-sample",
                 gather: str = "per-sample"):
        if kind not in DISTILL_KINDS:
            raise ValueError(f"distillation kind {kind!r}: expected one of {', '.join(DISTILL_KINDS)}")
        self.previous = copy.deepcopy(previous).eval().requires_grad_(False)
        self.kind, self.selection, self.gather = kind, selection, gather
        self.weight = self.bias = self.seen = None

    @torch.no_grad()
    def old_embedding(self, x: torch.Tensor) -> torch.Tensor:
        return self.previous(x, selection=self.selection, gather=self.gather)["embedding"]

    @torch.no_grad()
    def prepare(self, loader: Iterable, classes: Sequence[int], seen: Sequence[int], device: torch.device) -> None:
        """For ``bct``: synthesise the previous classifier's rows of ``classes`` (the new task's) as
        the class means of the old embedding over ``loader``, summed across processes under torchrun."""
        if self.kind != "bct":
            return
        head = self.previous.head
        D = head.weight.shape[1]
        sums = torch.zeros(len(classes), D, dtype=torch.float64, device=device)
        counts = torch.zeros(len(classes), dtype=torch.float64, device=device)
        row = {c: i for i, c in enumerate(classes)}
        for x, y in loader:
            emb = self.old_embedding(x.to(device)).double()
            rows = torch.tensor([row[int(c)] for c in y], device=device)
            sums.index_add_(0, rows, emb)
            counts.index_add_(0, rows, torch.ones_like(rows, dtype=torch.float64))
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        self.weight, self.bias = head.weight.detach().clone(), head.bias.detach().clone()
        index = torch.tensor(list(classes), device=device)
        self.weight[index] = (sums / counts.clamp(min=1).unsqueeze(1)).to(self.weight.dtype)
        self.bias[index] = 0.0
        self.seen = torch.tensor(list(seen), device=device)

    def term(self, x: torch.Tensor, labels: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """The unweighted distillation term for images ``x`` [B, ...] whose new embedding is ``embedding``."""
        if self.kind == "cosine":
            return cosine_distillation(embedding, self.old_embedding(x))
        return influence_loss(embedding, self.weight, self.bias, labels, self.seen)
