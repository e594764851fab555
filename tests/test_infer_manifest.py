"""The store manifest parser: valid manifests round-trip, anything else is one InputError (property-based)."""
import json
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpcompat.common.errors import InputError
from dpcompat.infer.store.manifest import DataRecord, Manifest, ModelRecord, Shard

SHA = st.text("0123456789abcdef", min_size=64, max_size=64)
NAME = st.text(min_size=1, max_size=30)
SCALARS = st.dictionaries(st.text(max_size=10), st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=20)
                          | st.floats(allow_nan=False, allow_infinity=False), max_size=5)


@st.composite
def manifests(draw):
    shard_rows = draw(st.integers(1, 1000))
    shards = tuple(Shard(draw(st.integers(0, shard_rows)), draw(SHA), draw(SHA))
                   for _ in range(draw(st.integers(1, 5))))
    count = sum(s.rows for s in shards)
    if count == 0:
        shards = (replace(shards[0], rows=1),) + shards[1:]
        count = 1
    skipped = tuple(draw(st.lists(NAME, max_size=4)))
    dim = draw(st.integers(1, 4096))
    model = ModelRecord(id=draw(NAME), sha256=draw(SHA), task=draw(st.integers(0, 100)),
                        embedding_dim=draw(st.sampled_from([None, dim])), export_versions=draw(SCALARS))
    data = DataRecord(spec=draw(NAME), location=draw(NAME), name=draw(NAME), split=draw(NAME), fingerprint=draw(SHA),
                      size=count + len(skipped))
    return Manifest(model=model, dataset=data, preprocessing=draw(SCALARS), skipped=skipped,
                    provenance=draw(SCALARS), count=count, dim=dim, shard_rows=shard_rows, shards=shards,
                    batch_size=draw(st.none() | st.integers(1, 512)), seconds=draw(st.none() | st.floats(0, 1e6)))


@given(manifests())
def test_valid_manifests_round_trip(manifest):
    assert Manifest.from_json(manifest.to_json(), "m.json") == manifest


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                    max_leaves=20)


def _parse_or_input_error(text):
    try:
        Manifest.from_json(text, "m.json")
    except InputError as e:
        assert str(e).startswith("m.json: ") and "\n" not in str(e)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(manifests(), st.data())
def test_hostile_edits_are_input_errors(manifest, data):
    """Replace one field anywhere in a valid manifest by arbitrary JSON: a manifest or one InputError."""
    d = json.loads(manifest.to_json())
    target = d
    path = data.draw(st.lists(st.sampled_from(["model", "dataset", "shards", 0, "rows", "count", "skipped", "dim",
                                               "shard_rows", "preprocessing", "fingerprint", "sha256"]), max_size=3))
    for step in path[:-1]:
        try:
            target = target[step]
        except (KeyError, IndexError, TypeError):
            break
    if isinstance(target, dict) and path:
        target[str(path[-1])] = data.draw(JSON)
    _parse_or_input_error(json.dumps(d))


@given(st.text(max_size=200) | JSON.map(json.dumps))
def test_arbitrary_text_is_an_input_error(text):
    with pytest.raises(InputError):
        Manifest.from_json(text, "m.json")


@pytest.mark.parametrize("text, message", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply|not readable JSON"),
    ('{"format_version": "2", "count": NaN}', "NaN is not a number|malformed"),
    ('{"format_version": 2}', "'format_version' is int"),
])
def test_crafted_json(text, message):
    with pytest.raises(InputError, match=message):
        Manifest.from_json(text, "m.json")


def test_bounds_and_consistency():
    base = Manifest(model=ModelRecord(id="m", sha256="0" * 64, task=1),
                    dataset=DataRecord(spec="s", location="l", name="n", split="t", fingerprint="f" * 64, size=3),
                    preprocessing={}, count=3, dim=4, shard_rows=2, shards=(Shard(2, "a" * 64, "b" * 64),
                                                                            Shard(1, "a" * 64, "b" * 64)))
    assert Manifest.from_json(base.to_json(), "m") == base
    for change, message in [({"count": 4}, "count 4 is not the sum"), ({"shard_rows": 1}, "more than shard_rows"),
                            ({"dim": 0}, "'dim' is 0"), ({"dim": 10**9}, "'dim' is 1000000000"),
                            ({"skipped": ["x"]}, r"\+ 1 skipped is not the data set size")]:
        with pytest.raises(InputError, match=message):
            Manifest.from_json(json.dumps({**json.loads(base.to_json()), **change}), "m")
    d = json.loads(base.to_json())
    d["shards"][0]["embeddings_sha256"] = "../../etc/passwd"
    with pytest.raises(InputError, match="not a sha256"):
        Manifest.from_json(json.dumps(d), "m")
