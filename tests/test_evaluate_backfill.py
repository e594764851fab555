"""Backfilling curves against a slow reference written as plain loops, and their end points against the
compatibility matrix."""
from collections import Counter

import numpy as np
import pytest

from dpcompat.common.errors import InputError
from dpcompat.evaluate.search.backfill import (area, backfill_order, default_pairs, exact_curve, fractions, index_curve,
                                        parse_pairs)
from dpcompat.evaluate.metrics.compat import compatibility
from dpcompat.evaluate.metrics.table import chosen
from dpcompat.evaluate.search.indexes import IndexParams, build_index


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def slow_metrics(query, gallery, ql, gl, k, exclude_self):
    """top1, top5, knn, mAP one query at a time, one item at a time (no ties in random data)."""
    top1 = top5 = knn = 0
    aps = []
    for r, q in enumerate(query):
        scored = [(-float(np.dot(q, g)), c) for c, g in enumerate(gallery) if not (exclude_self and c == r)]
        ranked = [c for _, c in sorted(scored)]
        labels = [gl[c] for c in ranked]
        top1 += labels[0] == ql[r]
        top5 += ql[r] in labels[:5]
        votes = Counter(labels[:k])
        best = max(votes.values())
        knn += next(x for x in labels[:k] if votes[x] == best) == ql[r]
        hits, total = 0, 0.0
        for rank, x in enumerate(labels, 1):
            if x == ql[r]:
                hits += 1
                total += hits / rank
        if hits:
            aps.append(total / hits)
    n = len(query)
    return {"top1": top1 / n, "top5": top5 / n, "knn": knn / n, "mAP": float(np.mean(aps))}


def slow_backfill(query, old, new, ql, gl, order, steps, k, exclude_self):
    curve = []
    for s in range(steps + 1):
        count = int(round(s / steps * len(old)))
        done = set(int(c) for c in order[:count])
        gallery = [new[c] if c in done else old[c] for c in range(len(old))]
        curve.append(slow_metrics(query, gallery, ql, gl, k, exclude_self))
    return {name: np.array([c[name] for c in curve]) for name in curve[0]}


@pytest.fixture
def models():
    rng = np.random.default_rng(3)
    return [unit(rng, 30, 6) for _ in range(2)], np.arange(30) % 3


def test_exact_curve_is_the_slow_reference_and_ends_at_the_matrix(models):
    (old, new), labels = models
    order = backfill_order(30, seed=4)
    f = fractions(5)
    got = exact_curve(new, old, new, labels, labels, order, f, k=3, exclude_self=True, names=chosen(full_map=True))
    want = slow_backfill(new, old, new, labels, labels, order, 5, 3, True)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-9, err_msg=name)
    c = compatibility([old, new], [old, new], labels, labels, k=3, exclude_self=True, names=chosen(full_map=True))
    for name in want:
        assert got[name][0] == c.metrics[name][1, 0]  # f = 0: C[i][j]
        assert got[name][-1] == c.metrics[name][1, 1]  # f = 1: C[i][i]
    assert area(f, got["top1"]) == pytest.approx(np.trapezoid(got["top1"], f))


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_index_curve_of_an_exhaustive_index_is_the_exact_curve(models, kind):
    pytest.importorskip("faiss", reason="faiss-cpu (the [faiss] extra) is not installed")
    (old, new), labels = models
    order = backfill_order(30, seed=4)
    f = fractions(5)
    resolved = IndexParams(nlist=3, nprobe=3).resolve(kind, 30, 6)
    ends = (build_index(old, kind, resolved), build_index(new, kind, resolved))
    got = index_curve(ends, kind, resolved, new, old, new, labels, labels, order, f, k=3, exclude_self=True,
                      depth=29)
    want = slow_backfill(new, old, new, labels, labels, order, 5, 3, True)
    # flat, IVF probing every list and HNSW on 30 items are exhaustive: the exact curve
    for name in ("top1", "top5", "knn"):
        np.testing.assert_allclose(got[name], want[name], err_msg=name)
    np.testing.assert_allclose(got["mAP@K"], want["mAP"], rtol=1e-6)


def drifted_sets(store, n=1200, dim=16, classes=12):
    """Two stored sets of one gallery: an old model and a new one whose space drifted (a partial
    rotation plus noise), so an index of one model's vectors is a poor structure for the other's."""
    from dpcompat.infer.store.manifest import DataRecord, Manifest, ModelRecord
    from dpcompat.infer.store.shards import write_set

    rng = np.random.default_rng(7)
    labels = np.arange(n) % classes
    base = rng.standard_normal((classes, dim))[labels] + rng.standard_normal((n, dim))
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    sets = []
    for m, x in enumerate([base, 0.5 * base + 0.5 * base @ rotation + 0.3 * rng.standard_normal((n, dim))]):
        x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
        data = DataRecord(spec="cifar10:test", location="data", name="cifar10", split="test", fingerprint="f" * 64,
                          size=n)
        manifest = Manifest(model=ModelRecord(id=f"m{m}", sha256="0" * 64, task=m), dataset=data, preprocessing={})
        sets.append(write_set(store / f"m{m}", x, labels.astype(np.int64), manifest, shard_rows=n))
    return sets


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfpq"])
def test_index_curve_ends_are_the_index_cells(tmp_path, kind):
    """f = 0 is cell C[new][old] and f = 1 cell C[new][new] of the same index kind, value for value: the
    ends search the very indexes the cells search (one build per gallery, same parameters and seed).
    On this gallery the approximate kinds are approximate (recall below 1), so a curve that patched the
    old index instead of indexing the new gallery would miss the diagonal."""
    pytest.importorskip("faiss", reason="faiss-cpu (the [faiss] extra) is not installed")
    from dpcompat.evaluate.search.production import ProductionOptions, evaluate_production

    sets = drifted_sets(tmp_path / "store")
    opts = ProductionOptions(indexes=(kind,), params=IndexParams(nprobe=2, pq_bits=4, ef_search=16), depth=60,
                             backfill=True, backfill_steps=4)
    exact = compatibility([s.embeddings for s in sets], [s.embeddings for s in sets], sets[0].labels,
                          sets[0].labels, exclude_self=True)
    out = evaluate_production(sets, sets, exact, ["m0", "m1"], opts, tmp_path / "store", exclude_self=True)
    cells = out["indexes"]["methods"][1]
    curve = out["backfill"]["pairs"][0]["curves"][kind]
    for name, values in curve.items():
        assert values[0] == cells["metrics"][name][1][0], name
        assert values[-1] == cells["metrics"][name][1][1], name
    recall = cells["recall"]["recall@60"]
    if kind == "flat":  # exact at every fraction
        np.testing.assert_array_equal(curve["top1"], out["backfill"]["pairs"][0]["curves"]["exact"]["top1"])
    else:
        assert min(recall[1][0], recall[1][1]) < 0.99, recall


def test_order_file_and_pairs(tmp_path, models):
    good = tmp_path / "order.txt"
    good.write_text("\n".join(map(str, range(29, -1, -1))) + "\n")
    np.testing.assert_array_equal(backfill_order(30, order_file=good), np.arange(29, -1, -1))
    bad = tmp_path / "bad.txt"
    bad.write_text("0\n1\n1\n")
    with pytest.raises(InputError, match="bad.txt: must list each gallery row 0..29 exactly once"):
        backfill_order(30, order_file=bad)
    bad.write_text("zero\n")
    with pytest.raises(InputError, match="one gallery row number per line"):
        backfill_order(30, order_file=bad)
    np.testing.assert_array_equal(backfill_order(30, seed=1), backfill_order(30, seed=1))
    assert default_pairs(4) == [(1, 0), (2, 0), (2, 1), (3, 0), (3, 2)]
    assert parse_pairs("t3:t1, t2:t1", ["t1", "t2", "t3"]) == [(2, 0), (1, 0)]
    with pytest.raises(InputError, match="must be older"):
        parse_pairs("t1:t2", ["t1", "t2"])
    with pytest.raises(InputError, match="NEW:OLD"):
        parse_pairs("t9:t1", ["t1", "t2"])
    with pytest.raises(InputError, match="--backfill-steps 0"):
        fractions(0)
