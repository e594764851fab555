"""``embed --engine ray`` where Ray would wait forever or end in its own traceback (issue 21): GPUs the
cluster does not have, an address where nothing listens, an unreadable image in an actor's batch."""
import socket
import time

import pytest

from dpcompat.common.errors import InputError
from dpcompat.infer.data.datasets import open_dataset
from dpcompat.infer.embed import embed_dataset
from dpcompat.infer.engines import ray as ray_engine
from dpcompat.infer.engines.ray import runtime_env
from dpcompat.infer.runtime.options import RayOptions, RuntimeOptions
from onnx_fixtures import run_cli, write_data, write_model
from test_hostile_models import assert_one_line
from test_infer_datasets import write_folder

ray = pytest.importorskip("ray", reason="Ray is not installed (extra [ray])")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_address_where_nothing_listens_is_one_line_at_once(tmp_path):
    model = write_model(tmp_path / "task1.onnx")
    write_data(tmp_path / "data", test_per_class=1)
    port = _free_port()
    start = time.perf_counter()
    r = run_cli("embed", "--model", str(model), "--dataset", "cifar10:test", "--engine", "ray", "--ray-address",
                f"127.0.0.1:{port}", "--provider", "cpu", "--quiet", cwd=tmp_path, timeout=120)
    assert_one_line(r, f"--ray-address 127.0.0.1:{port}: nothing answers there")
    assert time.perf_counter() - start < 60


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    try:
        ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
                 runtime_env=runtime_env(tmp_path_factory.mktemp("code")))
    except Exception as e:  # noqa: BLE001 - whatever stops Ray from starting here is the skip reason
        pytest.skip(f"a local Ray cannot start here: {type(e).__name__}: {e}")
    yield
    ray.shutdown()


def test_gpus_the_cluster_lacks_are_refused_after_a_bounded_wait(tmp_path, local_ray, monkeypatch):
    monkeypatch.setattr(ray_engine, "RESOURCES_TIMEOUT_S", 1.0)
    ds = open_dataset("cifar10:test", write_data(tmp_path / "data", test_per_class=1))
    model = write_model(tmp_path / "task1.onnx")
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"--gpus-per-actor 1: the Ray cluster offers 0 GPU\(s\) and 2 CPU\(s\)"):
        embed_dataset(model, ds, tmp_path / "s",
                      runtime=RuntimeOptions(provider="cpu", ray=RayOptions(gpus_per_actor=1)))
    assert time.perf_counter() - start < 30
    assert not list((tmp_path / "s").rglob("*.partial"))


def test_an_unreadable_image_in_an_actor_is_the_local_engines_one_line(tmp_path, local_ray):
    ds = open_dataset(f"folder:{write_folder(tmp_path / 'pets', bad=True)}")
    model = write_model(tmp_path / "task1.onnx")
    with pytest.raises(InputError) as local:
        embed_dataset(model, ds, tmp_path / "a", runtime=RuntimeOptions(provider="cpu", batch_size=3, workers=0))
    with pytest.raises(InputError) as remote:
        embed_dataset(model, ds, tmp_path / "b",
                      runtime=RuntimeOptions(provider="cpu", batch_size=3, ray=RayOptions(actors=1)))
    assert str(remote.value) == str(local.value) and "broken.png: unreadable image" in str(local.value)
    assert "\n" not in str(remote.value)
