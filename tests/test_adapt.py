"""Compatibility adapters (evaluate/adapt): fits with known answers, refusals, the adapter file, the
leakage guard and the learning curve. The ONNX files, the transformed gallery and the torch-free run
are in test_adapt_ship.py."""
import json
import zipfile

import numpy as np
import pytest

from dpcompat.common.errors import InputError
from dpcompat.evaluate.adapt import fit as fit_module
from dpcompat.evaluate.adapt.adapter import Adapter
from dpcompat.evaluate.adapt.curve import adapted_metrics, curve_sizes, learning_curve
from dpcompat.evaluate.adapt.fit import RIDGE_GRID, fit_adapter, min_rows
from dpcompat.evaluate.adapt.guard import check_no_leak, overlap
from dpcompat.evaluate.metrics.table import retrieval_metrics
from dpcompat.infer.store.manifest import DataRecord, Manifest, ModelRecord
from dpcompat.infer.store.shards import write_set

FIT = DataRecord(spec="folder:fit", location="folder:/data/fit", name="folder", split="fit", fingerprint="a" * 64,
                 size=1)
EVAL = DataRecord(spec="folder:eval", location="folder:/data/eval", name="folder", split="eval",
                  fingerprint="e" * 64, size=1)
SHA = {"old": "1" * 64, "new": "2" * 64, "other": "3" * 64}


def unit(x):
    x = np.asarray(x, np.float64)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n, dim, classes=8, spread=0.8, seed=0):
    """Unit rows around one centre per class (the same centres for every ``seed``; label = row mod
    classes), and the labels: fit and evaluation data of one distribution."""
    centres = np.random.default_rng(100).standard_normal((classes, dim))
    labels = np.arange(n) % classes
    return unit(centres[labels] + spread * np.random.default_rng(seed).standard_normal((n, dim))), labels


def rotation(dim, seed=1):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    return q


def put(root, model, x, labels, data=FIT, shard_rows=64, skipped=()):
    """A stored set of ``x`` by the model named ``model`` (its sha256 from SHA) on ``data``."""
    record = DataRecord(**{**data.__dict__, "size": len(x) + len(skipped)})
    manifest = Manifest(model=ModelRecord(id=model, sha256=SHA[model], task=list(SHA).index(model) + 1),
                        dataset=record, preprocessing={}, skipped=tuple(skipped))
    return write_set(root / model / record.location.rsplit("/", 1)[-1], unit(x), np.asarray(labels, np.int64),
                     manifest, shard_rows=shard_rows)


@pytest.fixture
def rotated(tmp_path):
    """The old model's embeddings X and the new model's X R (an exact rotation), on fit and eval data."""
    r = rotation(16)
    fx, fl = clustered(600, 16, seed=0)
    ex, el = clustered(400, 16, seed=5)
    sets = {"fit_old": put(tmp_path, "old", fx, fl), "fit_new": put(tmp_path, "new", fx @ r, fl, shard_rows=50),
            "old": put(tmp_path, "old", ex, el, data=EVAL), "new": put(tmp_path, "new", ex @ r, el, data=EVAL)}
    return r, sets


def diagonal(s):
    return retrieval_metrics(s.embeddings, s.labels, s.embeddings, s.labels, exclude_self=True)


def test_orthogonal_recovers_an_exact_rotation_and_the_diagonal(rotated):
    r, s = rotated
    query = fit_adapter(s["fit_new"], s["fit_old"], kind="orthogonal", direction="query")
    np.testing.assert_allclose(query.weight, r.T, atol=1e-6)  # new @ W = old, so W = R^T
    assert query.bias is None and query.ridge is None and query.fit_rows == 600
    assert adapted_metrics(query, s["new"], s["old"]) == diagonal(s["old"])
    unadapted = retrieval_metrics(s["new"].embeddings, s["new"].labels, s["old"].embeddings, s["old"].labels,
                                  exclude_self=True)
    assert unadapted["mAP@R"] < diagonal(s["old"])["mAP@R"] - 0.2  # the rotation does break compatibility
    gallery = fit_adapter(s["fit_old"], s["fit_new"], kind="orthogonal", direction="gallery")
    np.testing.assert_allclose(gallery.weight, r, atol=1e-6)
    assert adapted_metrics(gallery, s["new"], s["old"]) == diagonal(s["new"])


@pytest.mark.parametrize("kind", ["orthogonal", "linear", "affine"])
def test_rotation_plus_noise_comes_close_to_the_diagonal(tmp_path, kind):
    r, rng = rotation(16), np.random.default_rng(3)
    fx, fl = clustered(3000, 16, seed=0)
    ex, el = clustered(400, 16, seed=5)
    fit_new = put(tmp_path, "new", unit(fx @ r + 0.05 * rng.standard_normal(fx.shape)), fl, shard_rows=1000)
    fit_old = put(tmp_path, "old", fx, fl, shard_rows=700)
    old = put(tmp_path, "old", ex, el, data=EVAL)
    new = put(tmp_path, "new", unit(ex @ r + 0.05 * rng.standard_normal(ex.shape)), el, data=EVAL)
    adapter = fit_adapter(fit_new, fit_old, kind=kind, direction="query")
    adapted, diag = adapted_metrics(adapter, new, old), diagonal(old)
    assert abs(adapted["mAP@R"] - diag["mAP@R"]) < 0.02 and abs(adapted["top1"] - diag["top1"]) < 0.03
    assert (adapter.ridge is None) == (kind == "orthogonal") and len(adapter.selection) == (kind != "orthogonal") * 9


def test_a_nonlinear_map_improves_but_does_not_reach_the_diagonal(tmp_path):
    rng = np.random.default_rng(4)
    mix = rng.standard_normal((16, 16))

    def warp(x):
        return unit(np.sin(3 * x @ mix))

    fx, fl = clustered(4000, 16, seed=0)
    ex, el = clustered(400, 16, seed=5)
    fit_old, fit_new = put(tmp_path, "old", fx, fl, shard_rows=999), put(tmp_path, "new", warp(fx), fl)
    old, new = put(tmp_path, "old", ex, el, data=EVAL), put(tmp_path, "new", warp(ex), el, data=EVAL)
    adapter = fit_adapter(fit_new, fit_old, kind="affine", direction="query")
    adapted, diag = adapted_metrics(adapter, new, old)["mAP@R"], diagonal(old)["mAP@R"]
    unadapted = retrieval_metrics(new.embeddings, new.labels, old.embeddings, old.labels, exclude_self=True)["mAP@R"]
    assert unadapted + 0.05 < adapted < diag - 0.05


def test_linear_and_affine_recover_the_map_that_made_the_targets(tmp_path):
    rng = np.random.default_rng(2)
    x, labels = clustered(500, 12, seed=0)
    widen, _ = np.linalg.qr(rng.standard_normal((20, 12)))  # 12 orthonormal columns: x @ widen.T stays unit
    linear_y = x @ widen.T
    a, b = put(tmp_path / "lin", "new", x, labels), put(tmp_path / "lin", "old", linear_y, labels)
    fitted = fit_adapter(a, b, kind="linear", direction="query", ridge=0.0)
    np.testing.assert_allclose(fitted.weight, widen.T, atol=1e-6)
    np.testing.assert_allclose(fitted.apply64(x), linear_y, atol=1e-6)
    # affine: y = [0.8 x R, 0.6], a unit vector whose last coordinate is a bias
    r = rotation(12)
    affine_y = np.hstack([0.8 * x @ r, np.full((len(x), 1), 0.6)])
    a, b = put(tmp_path / "aff", "new", x, labels), put(tmp_path / "aff", "old", affine_y, labels)
    exact = fit_adapter(a, b, kind="affine", direction="query", ridge=0.0)
    np.testing.assert_allclose(exact.weight, np.hstack([0.8 * r, np.zeros((12, 1))]), atol=1e-6)
    np.testing.assert_allclose(exact.bias, [0] * 12 + [0.6], atol=1e-6)
    chosen = fit_adapter(a, b, kind="affine", direction="query")
    assert chosen.ridge == RIDGE_GRID[-1] and [r for r, _ in chosen.selection] == list(RIDGE_GRID)
    np.testing.assert_allclose(chosen.apply64(x), affine_y, atol=1e-4)
    no_bias = fit_adapter(a, b, kind="linear", direction="query")
    assert np.abs(no_bias.apply64(x) - affine_y).max() > 0.01  # a linear map cannot make the constant


def test_the_streamed_fit_equals_the_closed_form_in_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(fit_module, "BLOCK_ROWS", 7)  # blocks that straddle both sets' shards
    rng = np.random.default_rng(0)
    x, labels = clustered(300, 10, seed=0)
    y = unit(np.tanh(x @ rng.standard_normal((10, 6))) + 0.3)
    a, b = put(tmp_path, "new", x, labels, shard_rows=13), put(tmp_path, "old", y, labels, shard_rows=64)
    adapter = fit_adapter(a, b, kind="affine", direction="query", ridge=0.1)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    xc, yc = x64 - x64.mean(0), y64 - y64.mean(0)
    gram = xc.T @ xc
    weight = np.linalg.solve(gram + 0.1 * np.trace(gram) / 10 * np.eye(10), xc.T @ yc)
    np.testing.assert_allclose(adapter.weight, weight, atol=1e-10)
    np.testing.assert_allclose(adapter.bias, y64.mean(0) - x64.mean(0) @ weight, atol=1e-10)


def test_the_held_out_split_is_seeded_and_deterministic(rotated):
    _, s = rotated
    one, two = (fit_adapter(s["fit_new"], s["fit_old"], kind="linear", direction="query") for _ in range(2))
    assert one.digest == two.digest and one.selection == two.selection
    other = fit_adapter(s["fit_new"], s["fit_old"], kind="linear", direction="query", seed=1)
    assert other.selection != one.selection and other.seed == 1


def test_refusals_are_one_line_each(tmp_path):
    x, labels = clustered(40, 16, seed=0)
    a = put(tmp_path / "a", "new", x, labels)
    cases = [
        (put(tmp_path / "b", "old", x, labels, data=EVAL), {}, "embeddings of folder:/data/eval .* same items"),
        (put(tmp_path / "c", "old", x, labels[::-1]), {}, "not the same items .* labels differ"),
        (put(tmp_path / "d", "old", x[:39], labels[:39], skipped=("x",)), {}, r"39 vs 40 rows, 1 vs 0 skipped"),
        (put(tmp_path / "e", "old", x[:, :8], labels), {"kind": "orthogonal"}, "orthogonal adapter needs equal dim"),
        (put(tmp_path / "f", "new", x, labels), {}, "the same model as"),
        (put(tmp_path / "g", "old", x, labels), {"kind": "orthogonal", "ridge": 1.0}, "--ridge 1.0: an orthogonal"),
        (put(tmp_path / "h", "old", x, labels), {"kind": "sideways"}, "--kind 'sideways': expected one of"),
    ]
    for other, options, message in cases:
        with pytest.raises(InputError, match=message) as e:
            fit_adapter(a, other, **{"kind": "linear", "direction": "query", **options})
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("kind, ridge, need", [("orthogonal", None, 16), ("linear", 0.1, 16), ("linear", None, 18),
                                               ("affine", 0.1, 17), ("affine", None, 19)])
def test_too_few_rows_says_how_many_are_needed(tmp_path, kind, ridge, need):
    assert min_rows(kind, 16, choose_ridge=ridge is None and kind != "orthogonal") == need
    x, labels = clustered(need, 16, seed=0)
    a, b = put(tmp_path, "new", x, labels), put(tmp_path, "old", x @ rotation(16), labels)
    fit_adapter(a, b, kind=kind, direction="gallery", ridge=ridge)  # exactly enough
    with pytest.raises(InputError, match=rf"{need - 1} paired rows, the {kind} adapter from dimension 16 needs at "
                                         rf"least {need} \("):
        fit_adapter(a, b, kind=kind, direction="gallery", ridge=ridge, rows=np.arange(need - 1))


def test_an_adapted_set_is_no_fit_input(rotated, tmp_path):
    _, s = rotated
    adapter = fit_adapter(s["fit_old"], s["fit_new"], kind="orthogonal", direction="gallery")
    from dpcompat.evaluate.adapt.apply import apply_to_set
    moved = apply_to_set(adapter, s["old"], tmp_path / "store")
    with pytest.raises(InputError, match="already mapped into new's space by an adapter"):
        fit_adapter(moved, s["new"], kind="orthogonal", direction="query")


def test_the_adapter_file_round_trips_and_refuses_edits(rotated, tmp_path):
    _, s = rotated
    adapter = fit_adapter(s["fit_new"], s["fit_old"], kind="affine", direction="query")
    path = adapter.save(tmp_path / "a.adapter.npz")
    back = Adapter.load(path)
    assert back.digest == adapter.digest and back.meta() == adapter.meta() and back.default_id == "new-to-old"
    np.testing.assert_array_equal(back.weight, adapter.weight)
    np.testing.assert_array_equal(back.bias, adapter.bias)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    edits = [({"weight": arrays["weight"] * 1.001}, "differs from its recorded digest"),
             ({"meta": np.array(json.dumps({**meta, "ridge": 5.0}))}, "differs from its recorded digest"),
             ({"meta": np.array(json.dumps({**meta, "kind": "magic"}))}, "kind 'magic'"),
             ({"bias": np.zeros(3)}, "bias is float64 \\(3,\\)"),
             ({"meta": np.array(json.dumps({**meta, "source": {"id": "x"}}))}, "no 'sha256'")]
    for change, message in edits:
        edited = tmp_path / "edited.adapter.npz"
        np.savez(edited, **{**arrays, **change})
        with pytest.raises(InputError, match=message):
            Adapter.load(edited)
    (tmp_path / "junk.adapter.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="junk.adapter.npz: not a dpcompat adapter file"):
        Adapter.load(tmp_path / "junk.adapter.npz")
    with zipfile.ZipFile(tmp_path / "pickle.adapter.npz", "w") as z:
        z.writestr("weight.npy", b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
                   + b" " * 54 + b"\n")
    with pytest.raises(InputError, match="pickle.adapter.npz: not a dpcompat adapter file"):
        Adapter.load(tmp_path / "pickle.adapter.npz")


def _record(location, fingerprint="f" * 64, name="folder", split="x"):
    return DataRecord(spec="s", location=location, name=name, split=split, fingerprint=fingerprint, size=10)


@pytest.mark.parametrize("data, reason", [
    (_record("folder:/data/fit", "b" * 64), "the same data"),
    (_record("folder:/elsewhere", "a" * 64), "the same content"),
    (_record("folder:/data/fit/cats"), "one folder holds the other"),
    (_record("folder:/data"), "one folder holds the other"),
    (_record("folder:/data/fit2"), None),
    (_record("cifar10:test:/other/cifar-10-batches-py", name="cifar10", split="test"), None),
])
def test_overlap_reasons(data, reason):
    found = overlap(FIT, data)
    assert (found is None) if reason is None else reason in found


def test_overlap_of_cifar_splits_and_generated_sets():
    cifar = _record("cifar10:test:/a/cifar-10-batches-py", name="cifar10", split="test")
    copy = _record("cifar10:test:/b/cifar-10-batches-py", "b" * 64, name="cifar10", split="test")
    assert "the same cifar10 test split" in overlap(cifar, copy)
    assert overlap(cifar, _record("cifar10:train:/a/cifar-10-batches-py", "c" * 64, name="cifar10",
                                  split="train")) is None
    assert "share their first items" in overlap(_record("generated:1000"), _record("generated:100", "c" * 64))


def test_the_leakage_guard_refuses_an_adapter_fitted_on_the_evaluation_data(rotated):
    _, s = rotated
    leaked = fit_adapter(s["new"], s["old"], kind="orthogonal", direction="query")  # fitted on the eval data itself
    with pytest.raises(InputError, match=r"adapter [0-9a-f]{12}: fitted on folder:eval, which overlaps the query set "
                                         r".* \(the same data, folder:/data/eval\); fit it on data disjoint"):
        check_no_leak(leaked, s["new"], s["old"])
    with pytest.raises(InputError, match="overlaps the query set"):
        adapted_metrics(leaked, s["new"], s["old"])
    clean = fit_adapter(s["fit_new"], s["fit_old"], kind="orthogonal", direction="query")
    check_no_leak(clean, s["new"], s["old"])
    with pytest.raises(InputError, match="overlaps the gallery set"):
        check_no_leak(clean, s["new"], s["fit_old"])


def test_adapted_metrics_refuse_sets_of_other_models(rotated, tmp_path):
    _, s = rotated
    adapter = fit_adapter(s["fit_new"], s["fit_old"], kind="orthogonal", direction="query")
    with pytest.raises(InputError, match="but the adapter maps new's"):
        adapted_metrics(adapter, s["old"], s["old"])
    with pytest.raises(InputError, match="but the adapter maps into old's space"):
        adapted_metrics(adapter, s["new"], s["new"])


def test_curve_sizes():
    assert curve_sizes(2000, 18) == [100, 300, 1000, 2000]
    assert curve_sizes(30_000, 769) == [1000, 3000, 10_000, 30_000]
    assert curve_sizes(50, 18) == [50] and curve_sizes(10, 18) == []


def test_the_learning_curve_fits_nested_subsets_and_ends_at_the_full_fit(tmp_path):
    rng = np.random.default_rng(7)
    mix = rng.standard_normal((16, 16)) / 4
    fx, fl = clustered(2000, 16, seed=0)
    ex, el = clustered(300, 16, seed=5)
    fit_old, fit_new = put(tmp_path, "old", fx, fl, shard_rows=512), put(tmp_path, "new", unit(fx + fx @ mix), fl)
    old, new = put(tmp_path, "old", ex, el, data=EVAL), put(tmp_path, "new", unit(ex + ex @ mix), el, data=EVAL)
    points = learning_curve(fit_new, fit_old, new, old, kind="affine", direction="query")
    assert [p.size for p in points] == [100, 300, 1000, 2000] and all(p.ridge in RIDGE_GRID for p in points)
    full = fit_adapter(fit_new, fit_old, kind="affine", direction="query")
    assert points[-1].metrics == adapted_metrics(full, new, old)
    assert points[0].metrics["mAP@R"] < points[-1].metrics["mAP@R"]
    assert [p.size for p in learning_curve(fit_new, fit_old, new, old, kind="orthogonal", direction="query",
                                           sizes=[16, 50])] == [16, 50]
    with pytest.raises(InputError, match="sizes must lie from 16"):
        learning_curve(fit_new, fit_old, new, old, kind="orthogonal", direction="query", sizes=[10])
    with pytest.raises(InputError, match="overlaps the gallery set"):
        learning_curve(fit_new, fit_old, new, fit_old, kind="orthogonal", direction="query")
