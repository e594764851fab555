"""How reports name things: each figure file with its one-line explanation, the caption saying what
a figure was computed on, a model's label, and the papers' definitions of the evidence (AC, BC, FC,
AM, update gain) that every report states beside them."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

from ..metrics.decision import DEFAULT_METRIC
from ..metrics.table import METRICS, flip_names, metric
from ..metrics.significance import LEVEL
from ..pipeline import Evaluation

# The multi-model criteria as their papers define them: evidence beside the decision, never a verdict.
EVIDENCE = {
    "AC": "AC (Biondi et al., CL2R / CoReS): share of the pairs i > j with C[i][j] > C[j][j] (the papers' "
          "empirical criterion on point values; a tie counts as not met); evidence, not the verdict",
    "AC_per_model": "AC of model i: share of its older models j with C[i][j] > C[j][j]",
    "AM": "AM (Biondi et al.): mean of C[i][j] over i >= j",
    "BC": "BC: mean over the older models j of C[T][j] \u2212 C[j][j] (the newest model's queries on every "
          "older gallery); defined with at least two models",
    "FC": "FC: mean over i of C[i][i\u22121] \u2212 C[i][i] (each model's queries on the previous gallery "
          "against a full re-index); defined with at least two models",
    "update_gain": "update gain: (C[i][j] \u2212 C[j][j]) / (C[i][i] \u2212 C[j][j]), the share of a "
                   "re-index's change obtained without re-indexing; given only where that change is significant "
                   "(its bootstrap interval excludes 0), else undefined",
}


def figure_files(*, primary: str = DEFAULT_METRIC, names: Optional[Sequence[str]] = None) -> dict[str, str]:
    """``{file name: one-line explanation}`` of every figure, in the order the report lists them (the
    decision first); ``primary``: the decision rule's metric, whose heatmap and margin panel carry the
    pairs' verdicts; ``names``: the metrics computed (default: the label metrics, an evaluation's default)."""
    names = list(METRICS) if names is None else names
    files = {"decision.png": "the decision per pair: the primary metric's change C[i][j] \u2212 C[j][j] (candidate's "
                             "queries on the deployed gallery against the deployed model on it) with its interval "
                             "and what to do, on one symmetric scale; undecided pairs pale and hatched"}
    files |= {f"heatmap_{name}.png": f"{name} C[i][j] on a fixed 0-1 scale" + (
        "; cells marked with the pair's verdict under the decision rule: + compatible, \u2212 not compatible, "
        "? undecided" if name == primary else f" (evidence; the verdict is the decision rule's, on {primary})")
        for name in names}
    files["margins.png"] = ("C[i][j] \u2212 C[j][j] of every metric on one symmetric scale shared by the panels: "
                            "blue = the new query beats the old model on its own gallery, red = worse; the "
                            f"{primary} panel marks each pair's verdict under the decision rule, undecided pairs "
                            "pale and hatched")
    files["cmc.png"] = ("CMC curves (top-k accuracy, k = 1..depth): the diagonal cells on a zoomed axis (stated), and "
                        "the newest model's row as the change against each gallery model's own curve")
    flips = ", ".join(metric(name).label for name in flip_names() if name in names)
    if flips:  # none on unlabelled data: no right/wrong label metric
        files["negative_flips.png"] = (f"negative flip rates ({flips}): queries the old model answered right on its "
                                       "gallery that the new model's query gets wrong")
    files["heatmap_cka.png"] = ("linear CKA between the models' query embeddings on a linear 0-1 scale (drift; "
                                "evidence, not compatibility)")
    return files


def caption(ev: Evaluation) -> str:
    """What a figure was computed on: data, N query / N gallery, protocol and models."""
    own = ", each query's own image left out" if ev.protocol["own_image_left_out"] else ""
    rule = ev.decision.rule
    return (f"Query {ev.query['spec']} (N = {ev.query['count']}), gallery {ev.gallery['spec']} "
            f"(N = {ev.gallery['count']}{own}); cosine, kNN k = {ev.protocol['k']}; verdicts: the decision rule on "
            f"{rule.metric}, tolerance {rule.tolerance:g}, {LEVEL:.0%} paired bootstrap ({ev.result.resamples} "
            f"resamples). Models: {', '.join(map(model_label(ev), ev.models))}.")


def model_label(ev: Evaluation) -> Callable[[str], str]:
    """A model id as reports name it: a bundle's frozen backbone says what it is."""
    backbones = set(ev.protocol.get("frozen_backbone", ()))
    return lambda m: f"{m} (frozen backbone, no prompts)" if m in backbones else m
