"""How reports name things: each figure file with its one-line explanation, the caption saying what
a figure was computed on, and a model's label."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

from ..metrics.table import METRICS, chosen, flip_names
from ..metrics.significance import LEVEL
from ..pipeline import Evaluation


def figure_files(names: Optional[Sequence[str]] = None) -> dict[str, str]:
    """``{file name: one-line explanation}`` of every figure of a report on the metrics ``names``
    (default :func:`.table.chosen`), in the order the report lists them."""
    files = {f"heatmap_{name}.png": f"{name} C[i][j] on a fixed 0-1 scale; cells marked + compatible, "
                                     "\u2212 not compatible, ? undecided at this N" for name in (names or chosen())}
    files["margins.png"] = ("C[i][j] \u2212 C[j][j] of every metric on a diverging scale centred on each column's "
                            "diagonal: blue = the new query beats the old model on its own gallery, red = worse")
    files["cmc.png"] = "CMC curves (top-k accuracy, k = 1..depth) of the diagonal cells and of the newest model's row"
    flips = ", ".join(METRICS[name].label for name in flip_names() if name in (names or chosen()))
    files["negative_flips.png"] = (f"negative flip rates ({flips}): queries the old model answered right on its "
                                   "gallery that the new model's query gets wrong")
    files["heatmap_cka.png"] = "1 \u2212 linear CKA between the models' query embeddings on a log scale (drift)"
    return files


def caption(ev: Evaluation) -> str:
    """What a figure was computed on: data, N query / N gallery, protocol and models."""
    own = ", each query's own image left out" if ev.protocol["own_image_left_out"] else ""
    return (f"Query {ev.query['spec']} (N = {ev.query['count']}), gallery {ev.gallery['spec']} "
            f"(N = {ev.gallery['count']}{own}); cosine, kNN k = {ev.protocol['k']}; verdicts: {LEVEL:.0%} "
            f"bootstrap ({ev.result.resamples} resamples) + McNemar. Models: {', '.join(map(model_label(ev), ev.models))}.")


def model_label(ev: Evaluation) -> Callable[[str], str]:
    """A model id as reports name it: a bundle's frozen backbone says what it is."""
    backbones = set(ev.protocol.get("frozen_backbone", ()))
    return lambda m: f"{m} (frozen backbone, no prompts)" if m in backbones else m
