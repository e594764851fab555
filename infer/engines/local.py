"""The local engine: each batch through the model in this process (see :mod:`infer.embed`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import onnxruntime as ort

from ...common.contract import EMBEDDING_OUTPUT, PROMPT_INDEX_OUTPUT
from ..data.workers import Batch, Embedded
from ..runtime.session import run_model


@dataclass(frozen=True)
class View:
    """Where one stored set comes from in a model's outputs: the graph ``output``, at ``position`` of
    its task axis for a bundle's per-task embedding (None: the whole [N, D] output)."""

    output: str = EMBEDDING_OUTPUT
    position: Optional[int] = None

    @property
    def name(self) -> str:
        return self.output if self.position is None else f"{self.output}[:, {self.position}]"

    def take(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        out = outputs[self.output]
        return out if self.position is None else out[:, self.position]


def run_local(session: ort.InferenceSession, batches: Iterator[Batch], views: Sequence[View]) -> Iterator[Embedded]:
    """The local engine: each batch through the model in this process; ``embeddings`` [B, views, D]."""
    names = tuple(dict.fromkeys([v.output for v in views] + [PROMPT_INDEX_OUTPUT]))
    for b in batches:
        out = run_model(session, b.images, names) if len(b.rows) else {}
        stacked = np.stack([v.take(out) for v in views], axis=1) if out else None
        yield Embedded(b.start, b.rows, stacked, out.get(PROMPT_INDEX_OUTPUT), b.skipped)
