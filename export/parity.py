"""Parity of an exported file with its source model: the same inputs through both, explicit tolerances.

The comparison functions are pure (numpy in, numbers out) and know nothing of torch or onnxruntime;
:func:`compare` drives any two forward functions over several batch sizes and returns a
:class:`ParityReport`. :mod:`export.verify` plugs in the PyTorch model and onnxruntime.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

NEAR_TIE = 1e-5
KNN_K = 5
BATCH_SIZES = (1, 7, 32)

# images float32 [B, 3, S, S] -> (embedding float32 [B, D], prompt index int64 [B] or [B, top_k])
Forward = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
# images -> the reference's cosine similarities [B, pool] between queries and prompt keys
Similarity = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Tolerances:
    """Pass when every compared embedding has cosine >= ``min_cosine`` with the reference, the largest
    absolute difference is <= ``max_abs_rel`` x the largest reference magnitude, and prompt indices
    agree except where the reference's competing key similarities are within ``near_tie``."""

    min_cosine: float
    max_abs_rel: float
    near_tie: float = NEAR_TIE


# fp16 bounds come from measurement against the fp32 PyTorch model (ViT-B/16, random weights, CPU):
# the fp16 file on onnxruntime reached min cosine 0.9999997, max abs 8.5e-4 x max |reference|; the
# same half-precision module in PyTorch (every intermediate rounded to fp16, as on a GPU) 0.9999991 and
# 2.6e-3 x; fp16 moves key similarities by up to 1.4e-4, so prompt choices within 1e-3 count as ties.
TOLERANCES = {"fp32": Tolerances(min_cosine=0.99999, max_abs_rel=1e-4),
              "fp16": Tolerances(min_cosine=0.9995, max_abs_rel=1e-2, near_tie=1e-3)}


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [N, D] arrays, in float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(norms, 1e-300)


def nearest_neighbours(embeddings: np.ndarray, k: int = KNN_K) -> np.ndarray:
    """Indices [N, min(k, N - 1)] of each row's nearest other rows by cosine similarity, nearest first."""
    e = embeddings.astype(np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-300)
    sim = e @ e.T
    np.fill_diagonal(sim, -np.inf)
    k = min(k, len(e) - 1)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def knn_agreement(reference: np.ndarray, candidate: np.ndarray, k: int = KNN_K) -> np.ndarray:
    """Per row: whether its k nearest neighbours among the rows are the same set in both embeddings."""
    ref, got = nearest_neighbours(reference, k), nearest_neighbours(candidate, k)
    return np.array([set(r) == set(g) for r, g in zip(ref, got)], dtype=bool)


def near_ties(similarity: np.ndarray, top_k: int, eps: float = NEAR_TIE) -> np.ndarray:
    """Per row of [N, pool] similarities: whether the choice of the top_k (and their order) rests on
    a gap smaller than ``eps`` between consecutive values among the top_k + 1 largest."""
    s = -np.sort(-similarity.astype(np.float64), axis=1)[:, :top_k + 1]
    if s.shape[1] < 2:
        return np.zeros(len(s), dtype=bool)
    return (np.diff(-s, axis=1) < eps).any(axis=1)


@dataclass
class BatchParity:
    """One batch size's comparison over all inputs. Rows with NaN or Inf on either side are counted
    (a failure) and left out of the other figures, which are None when no row is left."""

    batch_size: int
    inputs: int
    max_abs: Optional[float]  # over finite inputs whose prompt indices agree
    max_reference: Optional[float]
    min_cosine: Optional[float]
    prompt_agree: int
    prompt_near_tie: int  # disagreements where the reference's key similarities nearly tie
    prompt_disagree: int  # other disagreements: a failure
    knn_same: int  # finite inputs whose 5 nearest neighbours among the finite inputs are the same
    nonfinite_reference: int = 0  # rows with NaN or Inf in the reference's embedding
    nonfinite_candidate: int = 0  # ... in the candidate's
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class ParityReport:
    precision: str
    selection: str
    tolerances: Tolerances
    rows: list[BatchParity]
    # Largest difference of one input's candidate embedding between batch sizes (per-sample selection).
    batch_invariance: Optional[float]
    failures: list[str]
    context: dict = field(default_factory=dict)  # what was compared: files, provider, inputs

    @property
    def passed(self) -> bool:
        return not self.failures and all(r.passed for r in self.rows)

    def to_dict(self) -> dict:
        return {"passed": self.passed, **self.context, "precision": self.precision, "selection": self.selection,
                "tolerances": asdict(self.tolerances), "batch_invariance_max_abs": self.batch_invariance,
                "failures": self.failures + [f for r in self.rows for f in r.failures],
                "batches": [{**asdict(r), "passed": r.passed} for r in self.rows]}


def run_batched(forward: Forward, images: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``forward`` over consecutive chunks of ``batch_size`` (the last may be smaller), concatenated."""
    outs = [forward(np.ascontiguousarray(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


def _tie_mask(ref_idx: np.ndarray, got_idx: np.ndarray, images: np.ndarray, similarity: Similarity,
              batch_size: int, batch_dependent: bool, top_k: int, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(disagreeing rows, disagreeing rows explained by a near tie). Similarities are computed only for
    batches that disagree. When one row's prompt choice can move others' (batchwise selection, the
    reference's gather) one near tie anywhere in a batch excuses the whole batch."""
    ref2, got2 = ref_idx.reshape(len(ref_idx), -1), got_idx.reshape(len(got_idx), -1)
    differ = (ref2 != got2).any(axis=1)
    excused = np.zeros_like(differ)
    for start in range(0, len(images), batch_size):
        rows = slice(start, start + batch_size)
        if not differ[rows].any():
            continue
        ties = near_ties(similarity(np.ascontiguousarray(images[rows])), top_k, eps)
        excused[rows] = differ[rows] & (ties.any() if batch_dependent else ties)
    return differ, excused


def finite_rows(embeddings: np.ndarray) -> np.ndarray:
    """bool [N]: rows of an [N, D] array with no NaN and no Inf."""
    return np.isfinite(embeddings).all(axis=1)


def judge_batch(batch_size: int, ref_emb: np.ndarray, got_emb: np.ndarray, differ: np.ndarray, excused: np.ndarray,
                tolerances: Tolerances, k: int = KNN_K) -> BatchParity:
    """One batch size's figures and failures from the two sides' embeddings [N, D] and the prompt
    disagreements (``differ``, of which ``excused`` are near ties), both bool [N]."""
    bad_ref, bad_got = ~finite_rows(ref_emb), ~finite_rows(got_emb)
    finite = ~(bad_ref | bad_got)
    same = ~differ & finite
    row = BatchParity(batch_size=batch_size, inputs=len(ref_emb), max_abs=None, max_reference=None, min_cosine=None,
                      prompt_agree=int((~differ).sum()), prompt_near_tie=int(excused.sum()),
                      prompt_disagree=int((differ & ~excused).sum()), knn_same=0,
                      nonfinite_reference=int(bad_ref.sum()), nonfinite_candidate=int(bad_got.sum()))
    if finite.any():
        row.max_reference = float(np.abs(ref_emb[finite]).max())
        row.knn_same = int(knn_agreement(ref_emb[finite], got_emb[finite], k).sum()) if finite.sum() > 1 else 0
    if same.any():
        row.max_abs = float(np.abs(ref_emb[same] - got_emb[same]).max())
        row.min_cosine = float(cosine_rows(ref_emb[same], got_emb[same]).min())
    if bad_ref.any() or bad_got.any():
        row.failures.append(f"batch {batch_size}: NaN or Inf in {row.nonfinite_candidate} candidate and "
                            f"{row.nonfinite_reference} reference embedding rows of {row.inputs}")
    if row.min_cosine is not None and row.min_cosine < tolerances.min_cosine:
        row.failures.append(f"batch {batch_size}: min cosine {row.min_cosine:.7f} < {tolerances.min_cosine}")
    if row.max_abs is not None and row.max_abs > tolerances.max_abs_rel * row.max_reference:
        row.failures.append(f"batch {batch_size}: max abs {row.max_abs:.3g} > {tolerances.max_abs_rel} x max "
                            f"|reference| {row.max_reference:.3g}")
    if row.prompt_disagree:
        row.failures.append(f"batch {batch_size}: {row.prompt_disagree} prompt indices differ outside near ties")
    return row


def compare(reference: Forward, candidate: Forward, images: np.ndarray, tolerances: Tolerances,
            similarity: Similarity, top_k: int = 1, selection: str = "per-sample", precision: str = "fp32",
            batch_sizes: Sequence[int] = BATCH_SIZES, k: int = KNN_K,
            batch_dependent: Optional[bool] = None) -> ParityReport:
    """Run both forwards on ``images`` at each batch size and judge the candidate against the reference.

    NaN or Inf anywhere in either side's embeddings is a failure (comparisons with NaN are false, so
    tolerances alone would pass them). ``batch_dependent`` (default: selection is not per-sample):
    embeddings may change with the batch, so batch-size invariance is not required, and the reference
    runs at every batch size; otherwise it is the same function at every size and runs once, at the
    largest, while the candidate runs (and is judged) at each."""
    rows, first = [], None
    batch_dependent = selection != "per-sample" if batch_dependent is None else batch_dependent
    invariance = None if batch_dependent else 0.0
    once = None if batch_dependent else run_batched(reference, images, max(batch_sizes))
    for bs in batch_sizes:
        ref_emb, ref_idx = once if once is not None else run_batched(reference, images, bs)
        got_emb, got_idx = run_batched(candidate, images, bs)
        differ, excused = _tie_mask(ref_idx, got_idx, images, similarity, bs, batch_dependent, top_k,
                                    tolerances.near_tie)
        rows.append(judge_batch(bs, ref_emb, got_emb, differ, excused, tolerances, k))
        if invariance is not None:
            if first is None:
                first = got_emb
            both = finite_rows(got_emb) & finite_rows(first)
            if both.any():
                invariance = max(invariance, float(np.abs(got_emb[both] - first[both]).max()))
    failures = []
    max_ref = max((r.max_reference for r in rows if r.max_reference is not None), default=0.0)
    if invariance is not None and invariance > tolerances.max_abs_rel * max_ref:
        failures.append(f"candidate embeddings change with the batch size by up to {invariance:.3g}")
    return ParityReport(precision, selection, tolerances, rows, invariance, failures)


def _num(value: Optional[float], spec: str, width: int) -> str:
    return format(value, f">{width}{spec}") if value is not None else f"{'-':>{width}}"


def format_table(report: ParityReport) -> str:
    """The report as a fixed-width table with a verdict line."""
    head = f"{'batch':>5} {'max abs':>10} {'max |ref|':>10} {'min cosine':>12} {'prompt agree':>13} " \
           f"{'near-tie':>8} {'other':>6} {'5-NN same':>10} {'NaN/Inf':>7}  result"
    lines = [head]
    for r in report.rows:
        lines.append(f"{r.batch_size:>5} {_num(r.max_abs, '.3g', 10)} {_num(r.max_reference, '.3g', 10)} "
                     f"{_num(r.min_cosine, '.10f', 12)} {r.prompt_agree:>6}/{r.inputs:<6} {r.prompt_near_tie:>8} "
                     f"{r.prompt_disagree:>6} {r.knn_same:>4}/{r.inputs:<5} "
                     f"{max(r.nonfinite_candidate, r.nonfinite_reference):>7}  {'pass' if r.passed else 'FAIL'}")
    t = report.tolerances
    if report.batch_invariance is not None:
        lines.append(f"batch invariance (candidate, max abs across batch sizes): {report.batch_invariance:.3g}")
    lines.append(f"tolerances ({report.precision}): min cosine >= {t.min_cosine}, max abs <= {t.max_abs_rel} x "
                 f"max |reference|, prompt indices equal unless key similarities within {t.near_tie}, "
                 "no NaN or Inf")
    lines.extend(report.failures + [f for r in report.rows for f in r.failures])
    lines.append("PASS" if report.passed else "FAIL")
    return "\n".join(lines)
