"""The similarity products and the ranking's inputs as an onnxruntime graph, on the inference host's
device (``evaluate --search-provider``): no torch, no onnx package (the graph is encoded by
:mod:`infer.runtime.protobuf`).

Per block of queries against one gallery the graph computes, on the provider:

* the similarities S = Q @ G^T (fp32; with ``fp16``, the product in float16, then float32), a
  query's own item masked (``-inf``) when query and gallery are the same images;
* ``TopK`` of every row (values and indices) to the depth its metrics read, L = max R + a margin
  (the whole row for the exact mAP), and the number of items at least as similar as the
  depth-th: the candidates are complete when they are all among the L;
* each query's first relevant place, exactly: 1 + #(items more similar than its best relevant item)
  + #(items as similar with a smaller index than the first relevant one).

The host finishes in numpy on those few values: it orders the candidates by decreasing similarity
then increasing gallery index (``TopK`` orders ties as it likes), reruns a row whose ties at the
depth reach past the margin with a deeper ``TopK``, and computes the outcomes with the functions of
:mod:`..metrics.selection` and :mod:`..metrics.neighbours`. Given the same similarities the outcomes
are those of :func:`..metrics.ranking.retrieval_outcomes`, bit for bit; the CPU provider's products
round like BLAS's only when they are exact (as integer-valued data are), otherwise ranks may differ
where two similarities differ in their last bits.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import AbstractSet, Optional

import numpy as np

from ...infer.runtime import protobuf as pb
from ..metrics.neighbours import knn_predict
from ..metrics.ranking import (FIRST_HIT, FIRST_R, FULL_RANKING, KNN_VOTE, REQUIREMENTS, QueryOutcomes,
                               check_depth, check_requirements)
from ..metrics.selection import LabelColumns, hits_at_r, sklearn_ap

PRECISIONS = ("fp32", "fp16")
SEARCH_PROVIDERS = ("numpy", "cpu", "cuda")  # and cuda:N
MARGIN = 16  # TopK places beyond the depth, so that ties at the depth rarely need a second run
OPSET, IR_VERSION = 13, 7
_OUTPUTS = ("top_values", "top_indices", "at_least", "first_hit")


def _nodes(half: bool) -> list[bytes]:
    n = pb.node
    product = "product" if half else "similarity_raw"
    nodes = [n("MatMul", ["query", "gallery_t"], [product], "product")]
    if half:
        nodes.append(n("Cast", ["product"], ["similarity_raw"], "to_float", to=pb.FLOAT))
    return nodes + [
        n("Unsqueeze", ["own", "axis1"], ["own_column"], "own_column"),
        n("Equal", ["own_column", "columns"], ["is_own"], "is_own"),
        n("Where", ["is_own", "neg_inf", "similarity_raw"], ["similarity"], "mask_own"),
        n("TopK", ["similarity", "keep"], ["top_values", "top_indices"], "top"),
        n("Gather", ["top_values", "depth_index"], ["depth_value"], "depth_value", axis=1),
        n("GreaterOrEqual", ["similarity", "depth_value"], ["candidate"], "candidate"),
        n("Cast", ["candidate"], ["candidate_count"], "candidate_count", to=pb.INT64),
        n("ReduceSum", ["candidate_count", "axis1"], ["at_least"], "at_least"),
        n("Unsqueeze", ["query_labels", "axis1"], ["query_label"], "query_label"),
        n("Equal", ["query_label", "gallery_labels"], ["same_label"], "same_label"),
        n("Greater", ["similarity", "neg_inf"], ["finite"], "finite"),
        n("And", ["same_label", "finite"], ["relevant"], "relevant"),
        n("Where", ["relevant", "similarity", "neg_inf"], ["relevant_only"], "relevant_only"),
        n("ReduceMax", ["relevant_only"], ["best"], "best", axes=[1]),
        n("Greater", ["similarity", "best"], ["more"], "more"),
        n("Cast", ["more"], ["more_count"], "more_count", to=pb.INT64),
        n("ReduceSum", ["more_count", "axis1"], ["above"], "above"),
        n("Equal", ["similarity", "best"], ["as_best"], "as_best"),
        n("And", ["as_best", "relevant"], ["relevant_best"], "relevant_best"),
        n("Cast", ["relevant_best"], ["relevant_best_float"], "relevant_best_float", to=pb.FLOAT),
        n("ArgMax", ["relevant_best_float"], ["first_column"], "first_column", axis=1),  # the first of the maxima
        n("Less", ["columns", "first_column"], ["earlier"], "earlier"),
        n("And", ["as_best", "earlier"], ["tied_before"], "tied_before"),
        n("Cast", ["tied_before"], ["tied_count"], "tied_count", to=pb.INT64),
        n("ReduceSum", ["tied_count", "axis1"], ["tied"], "tied"),
        n("Add", ["above", "tied"], ["before"], "before"),
        n("Add", ["before", "one"], ["first_hit"], "first_hit"),
    ]


def search_graph(precision: str = "fp32") -> bytes:
    """The search graph (module doc) as ONNX model bytes. Inputs: ``query`` [n, d] and ``gallery_t``
    [d, m] (float32, or float16 with ``fp16``); int64 ``own`` [n] (the column to mask, -1: none),
    ``columns`` [m] (0..m-1), ``query_labels`` [n], ``gallery_labels`` [m], ``keep`` [1] (TopK's K),
    ``depth_index`` [1] (depth - 1). Outputs: ``top_values`` float32 [n, keep] (descending),
    ``top_indices`` int64 [n, keep], ``at_least`` and ``first_hit`` int64 [n, 1]."""
    if precision not in PRECISIONS:
        raise ValueError(f"search precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    half = precision == "fp16"
    element = pb.FLOAT16 if half else pb.FLOAT
    dim = pb.dimension
    inputs = [pb.float_value_info("query", [dim("n"), dim("d")], element),
              pb.float_value_info("gallery_t", [dim("d"), dim("m")], element)]
    inputs += [pb.float_value_info(name, shape, pb.INT64) for name, shape in (
        ("own", [dim("n")]), ("columns", [dim("m")]), ("query_labels", [dim("n")]), ("gallery_labels", [dim("m")]),
        ("keep", [dim(1)]), ("depth_index", [dim(1)]))]
    outputs = [pb.float_value_info("top_values", [dim("n"), dim("k")]),
               pb.float_value_info("top_indices", [dim("n"), dim("k")], pb.INT64),
               pb.float_value_info("at_least", [dim("n"), dim(1)], pb.INT64),
               pb.float_value_info("first_hit", [dim("n"), dim(1)], pb.INT64)]
    constants = [pb.tensor("neg_inf", np.array(-np.inf, np.float32)), pb.tensor("axis1", np.array([1]), pb.INT64),
                 pb.tensor("one", np.array([1]), pb.INT64)]
    graph = (b"".join(pb.bytes_field(pb.GRAPH_NODE, x) for x in _nodes(half)) + pb.bytes_field(pb.GRAPH_NAME, "search")
             + b"".join(pb.bytes_field(pb.GRAPH_INITIALIZER, t) for t in constants)
             + b"".join(pb.bytes_field(pb.GRAPH_INPUT, x) for x in inputs)
             + b"".join(pb.bytes_field(pb.GRAPH_OUTPUT, x) for x in outputs))
    return pb.model(graph, opset=OPSET, ir_version=IR_VERSION, metadata={"dpcompat": "search graph"})


def ordered_candidates(values: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``TopK``'s ``values`` and ``indices`` [n, L] of each row in the total order: decreasing
    similarity, then increasing gallery index."""
    order = np.lexsort((indices, -values), axis=-1)
    return np.take_along_axis(values, order, axis=1), np.take_along_axis(indices, order, axis=1)


def candidate_outcomes(values: np.ndarray, indices: np.ndarray, first_hit: np.ndarray, query_labels: np.ndarray,
                       gallery_labels: np.ndarray, columns: LabelColumns, own_relevant: np.ndarray, *, k: int,
                       requires: frozenset) -> dict[str, np.ndarray]:
    """The :class:`..metrics.ranking.QueryOutcomes` fields ``requires`` asks for, from each row's
    candidates in the total order (:func:`ordered_candidates`: every item down to the depth, or the
    whole row for :data:`FULL_RANKING`), the graph's exact ``first_hit`` [n] and ``own_relevant`` [n]
    (bool: the query's own item, left out, has its label)."""
    n, m = len(values), len(gallery_labels)
    _, sizes = columns.sizes(query_labels)
    count = sizes - own_relevant  # R
    hits = (gallery_labels[indices] == query_labels[:, None]) & (values > -np.inf)
    out = {}
    if FIRST_R in requires:
        out["ap_at_r"], out["r_precision"] = hits_at_r(hits, count, sizes)
    if FULL_RANKING in requires:  # the candidates are the whole row
        width = int(sizes.max(initial=0))
        place = np.sort(np.where(hits, np.arange(1, hits.shape[1] + 1), m + 1), axis=1)[:, :width]
        place = np.pad(place, ((0, 0), (0, width - place.shape[1])), constant_values=m + 1)
        relevant = np.full((n, width), -np.inf, values.dtype)
        found = np.take_along_axis(values, np.minimum(place, m) - 1, axis=1)
        relevant[:, ::-1] = np.where(place <= m, found, -np.inf)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["ap"] = sklearn_ap(values[:, ::-1], relevant, count, sizes)
    if FIRST_HIT in requires:
        out["first_hit"] = np.where(count > 0, first_hit, 0)
    if KNN_VOTE in requires:
        out["knn_correct"] = knn_predict(gallery_labels[indices[:, :k]]) == query_labels
    return out


@dataclass
class DeviceSearch:
    """The search graph opened on ``provider`` ('cpu', 'cuda' or 'cuda:N'; an explicit GPU that does
    not work is an error, never a fallback) at ``precision``, and what it was opened as (``used``)."""

    provider: str = "cpu"
    precision: str = "fp32"
    threads: Optional[int] = None
    block_elements: int = 32 * 1024 * 1024  # similarities per graph run (and each [n, m] temporary)
    session: object = field(init=False, repr=False)
    used: str = field(init=False)

    def __post_init__(self):
        from ...infer.runtime.session import create_session

        self.session, self.used = create_session(search_graph(self.precision), self.provider, threads=self.threads,
                                                 option="--search-provider")

    def _run(self, feeds: dict, gallery_t, keep: int, depth: int) -> list[np.ndarray]:
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        binding.bind_ortvalue_input("gallery_t", gallery_t)
        binding.bind_cpu_input("keep", np.array([keep], np.int64))
        binding.bind_cpu_input("depth_index", np.array([depth - 1], np.int64))
        for name in _OUTPUTS:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def _block(self, query: np.ndarray, start: int, ql: np.ndarray, gl: np.ndarray, gallery_t, columns: LabelColumns,
               exclude_self: bool, k: int, requires: frozenset) -> dict[str, np.ndarray]:
        n, m = len(query), len(gl)
        own = np.arange(start, start + n) if exclude_self else np.full(n, -1)
        own_relevant = exclude_self & (gl[np.maximum(own, 0)] == ql)
        rows = {"query": query, "own": own.astype(np.int64), "query_labels": ql.astype(np.int64)}
        feeds = {**rows, "columns": np.arange(m, dtype=np.int64), "gallery_labels": gl.astype(np.int64)}
        count = columns.sizes(ql)[1] - own_relevant
        depth = max(k if KNN_VOTE in requires else 1, int(count.max(initial=1)) if FIRST_R in requires else 1)
        depth = m if FULL_RANKING in requires else min(depth, m)
        keep = min(m, depth + MARGIN)
        values, indices, at_least, first = self._run(feeds, gallery_t, keep, depth)
        short = at_least[:, 0] > keep  # ties at the depth reach past the margin: a deeper TopK
        if short.any():
            deeper = {**feeds, **{key: v[short] for key, v in rows.items()}}
            more, more_idx, _, _ = self._run(deeper, gallery_t, int(at_least.max()), depth)
            values = np.pad(values, ((0, 0), (0, more.shape[1] - keep)), constant_values=-np.inf)
            indices = np.pad(indices, ((0, 0), (0, more.shape[1] - keep)))
            values[short], indices[short] = more, more_idx
        values, indices = ordered_candidates(values, indices)
        return candidate_outcomes(values, indices, first[:, 0], ql, gl, columns, own_relevant, k=k, requires=requires)

    def retrieval_outcomes(self, query: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray,
                           gallery_labels: np.ndarray, *, k: int = 5, exclude_self: bool = False,
                           requires: AbstractSet[str] = REQUIREMENTS) -> QueryOutcomes:
        """:func:`..metrics.ranking.retrieval_outcomes` on the graph: the gallery copied to the device
        once, the queries in blocks of ``block_elements`` similarities."""
        import onnxruntime as ort

        from ...infer.runtime.device import session_device_id

        requires = check_requirements(requires)
        nq, ng = len(query), len(gallery)
        if exclude_self and nq != ng:
            raise ValueError("exclude_self needs the query and gallery sets to be the same images")
        check_depth(ng - exclude_self, k if KNN_VOTE in requires else 1)
        dtype = np.float16 if self.precision == "fp16" else np.float32
        device = "cuda" if self.used == "cuda" else "cpu"
        gallery_t = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(np.asarray(gallery, dtype).T), device,
                                                     session_device_id(self.session) if device == "cuda" else 0)
        columns, block = LabelColumns.of(gallery_labels), max(1, self.block_elements // max(ng, 1))
        parts = [self._block(np.ascontiguousarray(query[s:s + block], dtype), s, query_labels[s:s + block],
                             gallery_labels, gallery_t, columns, exclude_self, k, requires)
                 for s in range(0, nq, block)]
        return QueryOutcomes(**{f: np.concatenate([p[f] for p in parts]) for f in parts[0]})


def open_search(provider: Optional[str], evaluation_provider: str = "cpu", *, precision: str = "fp32",
                threads: Optional[int] = None) -> Optional[DeviceSearch]:
    """The search of ``evaluate --search-provider``: None for numpy (BLAS and the numpy ranking on the
    CPU), else the search graph opened on its provider (an error, not a fallback, when that provider
    does not work).

    ``provider``: 'numpy', 'cpu' (onnxruntime's CPU provider), 'cuda' or 'cuda:N'; None: the
    evaluation's (``evaluation_provider``, its ``--provider``): a GPU one ('cuda', 'tensorrt', or
    'auto' where CUDA works) runs the graph on CUDA, the CPU runs numpy. ``precision``: 'fp32', or
    'fp16' (the graph's products in float16; not with numpy).
    """
    from ...common.errors import InputError
    from ...infer.runtime.session import gpu_problem

    if precision not in PRECISIONS:
        raise InputError(f"--search-precision {precision}: expected one of {', '.join(PRECISIONS)}")
    if provider is None:
        name, _, index = evaluation_provider.partition(":")
        gpu = name in ("cuda", "tensorrt") or (name == "auto" and gpu_problem("cuda") is None)
        provider = ("cuda" + (f":{index}" if index else "")) if gpu else "numpy"
    name, _, index = provider.partition(":")
    if name not in SEARCH_PROVIDERS or (index and (name != "cuda" or not index.isdigit())):
        raise InputError(f"--search-provider {provider}: expected numpy, cpu, cuda or cuda:N")
    if name == "numpy":
        if precision != "fp32":
            raise InputError(f"--search-precision {precision}: the numpy search is fp32; use --search-provider "
                             "cpu or cuda")
        return None
    return DeviceSearch(provider, precision, threads)
