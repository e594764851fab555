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
    names = chosen() if names is None else names
    files = {"decision.png": "the decision per pair: the primary metric's change C[i][j] \u2212 C[j][j] (candidate's "
                             "queries on the deployed gallery against the deployed model on it) with its interval "
                             "and what to do, on one symmetric scale; undecided pairs pale and hatched"}
    files |= {f"heatmap_{name}.png": f"{name} C[i][j] on a fixed 0-1 scale; cells marked + compatible, "
                                     "\u2212 not compatible, ? undecided at this N" for name in names}
    files["margins.png"] = ("C[i][j] \u2212 C[j][j] of every metric on one symmetric scale shared by the panels: "
                            "blue = the new query beats the old model on its own gallery, red = worse; undecided "
                            "cells pale and hatched")
    files["cmc.png"] = ("CMC curves (top-k accuracy, k = 1..depth): the diagonal cells on a zoomed axis (stated), and "
                        "the newest model's row as the change against each gallery model's own curve")
    flips = ", ".join(METRICS[name].label for name in flip_names() if name in names)
    files["negative_flips.png"] = (f"negative flip rates ({flips}): queries the old model answered right on its "
                                   "gallery that the new model's query gets wrong")
    files["heatmap_cka.png"] = ("linear CKA between the models' query embeddings on a linear 0-1 scale (drift; "
                                "evidence, not compatibility)")
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
