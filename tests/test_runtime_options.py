"""One runtime options object for every path that embeds (issue 20, item 2): each command line run here
gives non-default values (provider tensorrt, 1 thread, 2 decoding workers, batch size 3, --skip-bad, a
TensorRT cache folder, --quiet), and each value must reach the place that uses it: the session
(provider, threads, TensorRT), the decoding pool (workers, batch size, skip-bad), the progress bar and
the stored manifest (batch size). Sessions are opened on the CPU by the spy (no GPU here), after it
recorded what it was asked for. ``evaluate --gallery-precision`` embeds nothing (it quantises stored
sets), so it is not among the paths."""
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from dpcompat.cli import cli
from dpcompat.evaluate import run as run_module
from dpcompat.infer import embed as embed_module
from dpcompat.infer.data import workers as workers_module
from dpcompat.infer.embed import run_sizes
from dpcompat.infer.engines import ray as ray_module
from dpcompat.infer.runtime import session as session_module, throughput as throughput_module
from dpcompat.common.errors import InputError
from dpcompat.infer.runtime.options import RayOptions, RuntimeOptions, TensorRTOptions
from dpcompat.infer.store.sets import read_set
from onnx_fixtures import model_info, write_bundle, write_data, write_model

BATCH = 3


@pytest.fixture
def spies(monkeypatch):
    """What each session, decoding pool and progress bar of an embed was asked for."""
    seen = {"sessions": [], "sources": [], "bars": [], "ray": [], "checked": []}
    real_session, real_source, real_bar = session_module.create_session, workers_module.batch_source, embed_module.tqdm

    def create_session(path, provider="auto", warn=None, *, threads=None, trt=None):
        seen["sessions"].append({"file": Path(path).name, "provider": provider, "threads": threads, "trt": trt})
        return real_session(path, "cpu", threads=threads)

    def batch_source(dataset, spec, **options):
        seen["sources"].append(options)
        return real_source(dataset, spec, **options)

    def bar(*args, **options):
        seen["bars"].append(options["disable"])
        return real_bar(*args, **options)

    monkeypatch.setattr(embed_module, "create_session", create_session)
    monkeypatch.setattr(throughput_module, "create_session", create_session)
    # The explicit provider is checked before any session (issue 21); here it is recorded instead.
    for module in (embed_module, run_module):
        monkeypatch.setattr(module, "check_provider", lambda provider: seen["checked"].append(provider))
    monkeypatch.setattr(embed_module, "batch_source", batch_source)
    monkeypatch.setattr(embed_module, "tqdm", bar)
    return seen


@pytest.fixture
def place(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_data(tmp_path / "data", test_per_class=4)  # 40 images: 14 batches of 3
    write_data(tmp_path / "data", name="cifar100", test_per_class=1, classes=4)
    return tmp_path


def runtime_args(place: Path) -> list[str]:
    return ["--provider", "tensorrt", "--threads", "1", "--trt-cache", str(place / "engines"), "--workers", "2",
            "--batch-size", str(BATCH), "--quiet"]


def run(*args) -> "click.testing.Result":
    r = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code in (0, 1), r.output
    return r


def assert_honoured(seen: dict, files: set[str], *, per_run: int = BATCH, skip_bad: bool = True) -> None:
    """Every session of ``files`` opened with the non-default provider, threads and TensorRT cache;
    every decoding pool with 2 workers, ``per_run`` images per batch and ``skip_bad``; no bar shown."""
    sessions = [s for s in seen["sessions"] if s["file"] in files]
    assert {s["file"] for s in sessions} == files
    for s in sessions:
        assert (s["provider"], s["threads"], s["trt"]) == ("tensorrt", 1, TensorRTOptions(cache=Path.cwd() / "engines"))
    assert seen["sources"] and all((o["workers"], o["batch_size"], o["skip_bad"]) == (2, per_run, skip_bad)
                                   for o in seen["sources"]), seen["sources"]
    assert seen["bars"] and all(seen["bars"])


def stored(store: Path) -> list:
    return [read_set(p.parent) for p in sorted(store.glob("*/*/manifest.json"))]


def test_embed_single_file(place, spies):
    write_model(place / "task1.onnx")
    run("embed", "--model", "task1.onnx", "--dataset", "cifar10:test", "--store", "s", *runtime_args(place),
        "--skip-bad")
    assert_honoured(spies, {"task1.onnx"})
    assert [s.manifest.batch_size for s in stored(place / "s")] == [BATCH]
    assert spies["checked"] == ["tensorrt"]  # the explicit provider, checked once before any work


def test_embed_bundle(place, spies):
    write_bundle(place / "tasks.onnx", tasks=(1, 2))
    run("embed", "--model", "tasks.onnx", "--dataset", "cifar10:test", "--store", "s", *runtime_args(place),
        "--skip-bad")
    # a bundle's batch counts rows of all its tasks: 3 rows of 2 tasks are 1 image per run
    assert_honoured(spies, {"tasks.onnx"}, per_run=run_sizes(BATCH, 65_536, 2)[0])
    sets = stored(place / "s")
    assert len(sets) == 3 and {s.manifest.batch_size for s in sets} == {BATCH}


def test_evaluate_own_sets_and_precision_exports(place, spies):
    for task in (1, 2):
        write_model(place / "exports" / f"task{task}.onnx", task=task)
        write_model(place / "fp16" / f"task{task}.onnx", info=replace(model_info(task), precision="fp16"), seed=task)
    run("evaluate", "--exports-dir", "exports", "--store", "s", "--out", "r", *runtime_args(place), "--skip-bad",
        "--precision-exports", "fp16", "--search-provider", "numpy")  # the spied GPU provider is not one for search
    # own sets, the fp16 exports' sets (embedded with the command's options, issue 20) and the timed files
    assert_honoured(spies, {"task1.onnx", "task2.onnx"})
    assert len([s for s in spies["sessions"] if s["file"] == "task1.onnx"]) == 2  # fp32 and fp16 copies
    sets = stored(place / "s")
    assert {s.model_id for s in sets} == {"task1", "task2", "task1-fp16", "task2-fp16"}
    assert {s.manifest.batch_size for s in sets} == {BATCH}
    assert (place / "r" / "production.json").is_file()


def test_audit_with_a_model(place, spies):
    write_model(place / "m.onnx")
    run("audit", "cifar10:test", "cifar100:test", "--model", "m.onnx", "--store", "s", "--out", "a",
        *runtime_args(place))
    assert_honoured(spies, {"m.onnx"}, skip_bad=False)
    sets = stored(place / "s")
    assert len(sets) == 2 and {s.manifest.batch_size for s in sets} == {BATCH}


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    ray = pytest.importorskip("ray", reason="Ray is not installed (extra [ray])")
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env=ray_module.runtime_env(tmp_path_factory.mktemp("code")))
    except Exception as e:  # noqa: BLE001 - whatever stops Ray from starting here is the skip reason
        pytest.skip(f"a local Ray cannot start here: {type(e).__name__}: {e}")
    yield
    ray.shutdown()


def test_ray_engine(place, spies, local_ray, monkeypatch):
    real = ray_module._ordered_batches

    def ordered_batches(ray, started, model, dataset, options, provider, bounds, skip_bad, threads, trt):
        spies["ray"].append({"provider": provider, "threads": threads, "trt": trt, "skip_bad": skip_bad,
                             "sizes": {e - s for s, e in bounds}, "actors": options.actors})
        # the actors open their sessions themselves: on the CPU here, without TensorRT settings
        return real(ray, started, model, dataset, options, "cpu", bounds, skip_bad, threads, TensorRTOptions())

    monkeypatch.setattr(ray_module, "_ordered_batches", ordered_batches)
    write_model(place / "task1.onnx")
    args = [a for a in runtime_args(place) if a not in ("--workers", "2")]
    run("embed", "--model", "task1.onnx", "--dataset", "cifar10:test", "--store", "s", *args, "--skip-bad",
        "--engine", "ray", "--actors", "1")
    [call] = spies["ray"]
    assert (call["provider"], call["threads"], call["skip_bad"], call["actors"]) == ("tensorrt", 1, True, 1)
    assert call["trt"].cache.name == "engines" and call["sizes"] == {BATCH, 40 % BATCH}
    assert all(spies["bars"]) and [s.manifest.batch_size for s in stored(place / "s")] == [BATCH]


@pytest.mark.parametrize("options, message", [
    ({"batch_size": 0}, "--batch-size 0"), ({"batch_size": 4097}, "--batch-size 4097"), ({"threads": 0}, "--threads 0"),
    ({"threads": 1025}, "--threads 1025"), ({"workers": -1}, "--workers -1"), ({"workers": 257}, "--workers 257"),
    ({"ray": RayOptions(actors=0)}, "--actors 0"), ({"ray": RayOptions(gpus_per_actor=float("nan"))}, "--gpus-per-actor nan"),
])
def test_the_library_checks_the_ranges_the_command_line_declares(options, message):
    with pytest.raises(InputError, match=message):
        RuntimeOptions(**options).check()
