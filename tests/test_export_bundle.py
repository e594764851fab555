"""Bundles of tiny tasks: each slice equals its single-task export; refusals; metadata and size; fp16,
batchwise and mean pooling; verify, embed (per-task store sets) and evaluate (the backbone row) on a
bundle; the bundle on onnxruntime alone."""
import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from dpcompat.cli import cli
from dpcompat.common.errors import InputError
from dpcompat.evaluate.pipeline import collect_from_models, evaluate_sets
from dpcompat.export.bundle import export_bundle
from dpcompat.export.onnx_export import file_sha256, initializer_bytes
from dpcompat.export.parity import TOLERANCES, compare, cosine_rows
from dpcompat.export.verify import Inputs, torch_forward, torch_similarity
from dpcompat.export.verify_bundle import verify_bundle
from dpcompat.infer.runtime.bundle import BundleInfo, bundle_set_ids, is_bundle, read_props, task_outputs
from dpcompat.infer.data.datasets import open_dataset
from dpcompat.infer.embed import embed_dataset, embed_model
from dpcompat.infer.runtime.metadata import ModelInfo
from dpcompat.infer.runtime.options import RuntimeOptions
from dpcompat.infer.runtime.session import model_info
from dpcompat.train.checkpoint import checkpoint_path, config_to_args, model_from_checkpoint, save_checkpoint
from dpcompat.train.model import DualPromptViT
from dpcompat.common.faults import ENV
from onnx_fixtures import leftovers, run_cli, write_data
from test_faults import contents
from test_evaluate_cli import BLOCK_TORCH
from train_fixtures import tiny_model, varied_images

ARCH = dict(depth=4, e_prompt_layers=(2, 3))  # a shallower tiny model: the bundles trace faster
TASKS = (1, 2, 3)
IMAGES = varied_images(24, seed=7).numpy()


def _task_model(backbone: DualPromptViT, seed: int) -> DualPromptViT:
    """A task model with its own random prompts, keys and head on ``backbone``'s frozen weights."""
    model = tiny_model(seed, **ARCH)
    state = model.state_dict()
    for name, value in backbone.state_dict().items():
        if name.startswith(DualPromptViT.BACKBONE):
            state[name] = value
    model.load_state_dict(state)
    return model.eval()


def _save(folder, task, model):
    return save_checkpoint(checkpoint_path(folder, task), model, None, 0, config_to_args(model.cfg))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("bundle"))


def make_run(root):
    """Checkpoints of three tasks on one backbone (biases and norms random too), their single-task
    exports and their bundle, both written through the CLI, under ``root``."""
    backbone = tiny_model(0, **ARCH)
    with torch.no_grad():
        for name, p in backbone.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.normal_(1.0 if "norm" in name and name.endswith("weight") else 0.0, 0.05)
    for task in TASKS:
        _save(root / "checkpoint", task, _task_model(backbone, 10 + task))
    for extra in ([], ["--bundle"]):
        r = CliRunner().invoke(cli, ["export", "--all", "--checkpoint-dir", str(root / "checkpoint"),
                                     "--output-dir", str(root / "exports"), *extra], catch_exceptions=False)
        assert r.exit_code == 0, r.output
    return root


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _models(run):
    return {t: model_from_checkpoint(checkpoint_path(run / "checkpoint", t))[0] for t in TASKS}


def test_each_slice_equals_its_single_task_export(run):
    bundle = _session(run / "exports" / "tasks.onnx")
    out = dict(zip(["embedding", "prompt_index", "query"], bundle.run(None, {"image": IMAGES})))
    assert out["embedding"].shape == (len(IMAGES), 3, 64) and out["prompt_index"].shape == (len(IMAGES), 3)
    chosen = set()
    for position, task in enumerate(TASKS):
        single, index = _session(run / "exports" / f"task{task}.onnx").run(None, {"image": IMAGES})
        embedding, bundle_index = task_outputs(out, position)
        np.testing.assert_allclose(embedding, single, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(bundle_index, index)
        chosen |= set(index.tolist())
    assert len(chosen) > 1, "the test images should choose more than one prompt"
    model = _models(run)[1]
    with torch.no_grad():
        query = model.query(torch.from_numpy(IMAGES)).numpy()
    np.testing.assert_allclose(out["query"], query, rtol=0, atol=1e-5)


def test_outputs_do_not_depend_on_the_batch(run):
    bundle = _session(run / "exports" / "tasks.onnx")
    alone = [bundle.run(None, {"image": IMAGES[i:i + 1]}) for i in range(6)]
    order = np.random.default_rng(1).permutation(len(IMAGES))
    mixed = bundle.run(None, {"image": IMAGES[order]})
    where = np.argsort(order)[:6]
    for k in range(3):
        np.testing.assert_allclose(mixed[k][where], np.concatenate([a[k] for a in alone]), rtol=0, atol=1e-5)


def test_metadata_is_each_single_files_and_read_without_a_session(run):
    path = run / "exports" / "tasks.onnx"
    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert read_props(path) == props
    assert is_bundle(path) and not is_bundle(run / "exports" / "task1.onnx")
    info = BundleInfo.from_props(props, str(path))
    assert info.task_numbers == list(TASKS)
    for task, entry in zip(TASKS, json.loads(props["bundle_tasks"])):
        assert entry == {"task": task, "checkpoint": f"task{task}_checkpoint.pth",
                         "checkpoint_sha256": file_sha256(checkpoint_path(run / "checkpoint", task))}
        single = ModelInfo.from_props(read_props(run / "exports" / f"task{task}.onnx"), "single")
        assert info.tasks[task - 1] == single
    with pytest.raises(InputError, match="a bundle of several tasks"):
        model_info(_session(path), path)


def test_backbone_is_stored_once(run):
    model = _models(run)[1]
    backbone = sum(p.numel() * 4 for n, p in model.named_parameters() if n.startswith(DualPromptViT.BACKBONE))
    per_task = 4 * (model.g_prompt.numel() + model.e_prompt.prompt.numel() + model.e_prompt.prompt_key.numel())
    bound = backbone + len(TASKS) * per_task
    path = run / "exports" / "tasks.onnx"
    weights = initializer_bytes(onnx.load(path))
    assert weights <= bound + 4096  # slack: scalar constants only
    single = run / "exports" / "task1.onnx"
    single_graph = single.stat().st_size - initializer_bytes(onnx.load(single))
    # one prompted pass per task: the graph's nodes (not its weights) grow with T, at most a single file's each
    assert path.stat().st_size - weights <= len(TASKS) * single_graph
    assert path.stat().st_size < 1.5 * single.stat().st_size


def test_refuses_a_changed_backbone_tensor_or_architecture(run, tmp_path):
    folder = tmp_path / "checkpoint"
    shutil.copytree(run / "checkpoint", folder)
    changed = model_from_checkpoint(checkpoint_path(folder, 2))[0]
    with torch.no_grad():
        changed.blocks[1].mlp.fc1.weight[0, 0] += 1e-3
        changed.pos_embed[0, 0, 0] += 1e-3
    _save(folder, 2, changed)
    _save(folder, 4, tiny_model(4, depth=5, e_prompt_layers=(2, 3)))
    checkpoints = {t: checkpoint_path(folder, t) for t in (1, 2, 3, 4)}
    with pytest.raises(InputError) as refused:
        export_bundle(checkpoints, tmp_path / "tasks.onnx")
    message = str(refused.value)
    assert "task 2 (task2_checkpoint.pth): pos_embed, blocks.1.mlp.fc1.weight;" in message
    assert "task 4 (task4_checkpoint.pth): architecture: depth 5 (not 4)" in message
    assert "task 3" not in message and not (tmp_path / "tasks.onnx").exists()
    r = run_cli("export", "--all", "--bundle", "--checkpoint-dir", str(folder), "--output-dir", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: cannot bundle")
    r = run_cli("export", "--all", "--bundle", "--bundle-name", "sub/x.onnx", "--checkpoint-dir", str(folder),
                cwd=tmp_path)
    assert r.returncode == 2 and "--bundle-name" in r.stderr


def test_reference_modes_bundle_reproduces_each_tasks_batch_dependence(run, tmp_path):
    models = _models(run)
    path = export_bundle({t: checkpoint_path(run / "checkpoint", t) for t in (2, 3)}, tmp_path / "ref.onnx",
                         gather="reference", query="notebook").path
    assert BundleInfo.from_props(read_props(path), "ref").common.gather == "reference"
    session = _session(path)
    for position, task in enumerate((2, 3)):
        model = models[task]
        report = compare(torch_forward(model, "per-sample", "cls", gather="reference", query="notebook"),
                         lambda x, p=position: task_outputs(dict(zip(["embedding", "prompt_index"],
                                                                     session.run(None, {"image": x}))), p),
                         IMAGES, TOLERANCES["fp32"], torch_similarity(model, query="notebook"),
                         batch_sizes=(1, 2, 7), batch_dependent=True)
        assert report.passed, report.to_dict()
    with torch.no_grad():  # the query output stays the frozen [CLS], whatever chooses the prompts
        cls = models[2].query(torch.from_numpy(IMAGES)).numpy()
    np.testing.assert_allclose(session.run(["query"], {"image": IMAGES})[0], cls, rtol=0, atol=1e-5)


def test_fp16_batchwise_and_mean_pool_bundles_against_pytorch(run, tmp_path):
    models = _models(run)
    checkpoints = {t: checkpoint_path(run / "checkpoint", t) for t in (3, 1)}  # any order: output order
    half = export_bundle(checkpoints, tmp_path / "half.onnx", precision="fp16").path
    batchwise = export_bundle(checkpoints, tmp_path / "bw.onnx", selection="batchwise", pool="mean").path
    assert BundleInfo.from_props(read_props(half), "half").task_numbers == [3, 1]
    for path, selection, pool, precision, sizes in ((half, "per-sample", "cls", "fp16", (1, 24)),
                                                     (batchwise, "batchwise", "mean", "fp32", (1, 7, 24))):
        session = _session(path)
        for position, task in enumerate((3, 1)):
            model = models[task]
            report = compare(torch_forward(model, selection, pool),
                             lambda x, p=position: task_outputs(dict(zip(["embedding", "prompt_index"],
                                                                         session.run(None, {"image": x}))), p),
                             IMAGES, TOLERANCES[precision], torch_similarity(model), selection=selection,
                             precision=precision, batch_sizes=sizes)
            assert report.passed, report.to_dict()
    fp32 = _session(run / "exports" / "tasks.onnx").run(["embedding"], {"image": IMAGES})[0][:, 2]
    fp16 = _session(half).run(["embedding"], {"image": IMAGES})[0][:, 0]
    assert cosine_rows(fp32, fp16).min() < 1 - 1e-9, "fp16 should really compute in half precision"
    assert len(set(_session(batchwise).run(["prompt_index"], {"image": IMAGES[:8]})[0][:, 0].tolist())) == 1


def test_verify_checks_every_task_and_the_query(run, tmp_path):
    reports = verify_bundle(run / "exports" / "tasks.onnx", run / "checkpoint", inputs=Inputs(count=12),
                            batch_sizes=(1, 5))
    assert [r.context["task"] for r in reports] == [1, 2, 3, "backbone"]
    assert all(r.passed for r in reports), [r.to_dict() for r in reports]
    assert all(r.rows[0].max_abs < 1e-5 for r in reports)
    shutil.copytree(run / "checkpoint", tmp_path / "checkpoint")
    shutil.copy(checkpoint_path(tmp_path / "checkpoint", 1), checkpoint_path(tmp_path / "checkpoint", 2))
    with pytest.raises(InputError, match="task2_checkpoint.pth: not the checkpoint"):
        verify_bundle(run / "exports" / "tasks.onnx", tmp_path / "checkpoint", inputs=Inputs(count=4))
    r = run_cli("verify", "--onnx", str(run / "exports" / "tasks.onnx"), "--checkpoint-dir", str(run / "checkpoint"),
                "--random", "6", "--report", "v.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("PASS") == 4
    assert [x["task"] for x in json.loads((tmp_path / "v.json").read_text())["reports"]] == [1, 2, 3, "backbone"]


def test_store_sets_equal_the_single_files_and_reuse_per_set(run, tmp_path):
    data = open_dataset("cifar10:test", write_data(tmp_path / "data", test_per_class=3))
    bundle = run / "exports" / "tasks.onnx"
    results = embed_model(bundle, data, tmp_path / "store", runtime=RuntimeOptions(batch_size=7), shard_rows=20)
    assert [r.set.model_id for r in results] == ["tasks.backbone", "tasks.task1", "tasks.task2", "tasks.task3"]
    assert not any(r.reused for r in results)
    for task, r in zip(TASKS, results[1:]):
        single = embed_dataset(run / "exports" / f"task{task}.onnx", data, tmp_path / "single",
                               runtime=RuntimeOptions(batch_size=5)).set
        np.testing.assert_allclose(r.set.embeddings, single.embeddings, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(r.set.labels, single.labels)
        assert r.set.manifest.model.task == task and r.set.manifest.model.output == f"embedding[:, {task - 1}]"
        assert r.set.manifest.model.checkpoint_sha256 == single.manifest.model.checkpoint_sha256
        assert len(r.set.manifest.shards) == 6  # shard_rows 20 over the four sets: 5 rows per shard of each
    with torch.no_grad():
        images = torch.from_numpy(Inputs(dataset="cifar10:test", data_path=str(tmp_path / "data"), count=30).load(
            model_info(_session(run / "exports" / "task1.onnx"), "task1")))
        query = _models(run)[1].query(images).numpy()
    np.testing.assert_allclose(results[0].set.embeddings, query / np.linalg.norm(query, axis=1, keepdims=True),
                               rtol=0, atol=1e-5)
    backbone = results[0].set.manifest.model
    assert (backbone.output, backbone.task, backbone.checkpoint_sha256) == ("query", 0, None)
    shutil.rmtree(results[2].set.path)
    again = embed_model(bundle, data, tmp_path / "store", runtime=RuntimeOptions(batch_size=7), shard_rows=20)
    assert [r.reused for r in again] == [True, True, False, True]
    np.testing.assert_array_equal(again[2].set.embeddings, results[2].set.embeddings)


def test_evaluate_on_the_bundle_is_the_single_files_matrix_plus_the_backbone(run, tmp_path):
    data = write_data(tmp_path / "data", test_per_class=3)
    singles = collect_from_models([run / "exports" / f"task{t}.onnx" for t in TASKS], "cifar10:test", "cifar10:test",
                                  data, tmp_path / "s1", runtime=RuntimeOptions(provider="cpu"))
    bundled = collect_from_models([run / "exports" / "tasks.onnx"], "cifar10:test", "cifar10:test", data,
                                  tmp_path / "s2", runtime=RuntimeOptions(provider="cpu"))
    single_ev, bundle_ev = evaluate_sets(*singles), evaluate_sets(*bundled)
    assert bundle_ev.models == bundle_set_ids("tasks", BundleInfo.from_props(read_props(
        run / "exports" / "tasks.onnx"), "b"))
    assert bundle_ev.protocol["frozen_backbone"] == ["tasks.backbone"]
    for name, matrix in bundle_ev.result.metrics.items():
        np.testing.assert_allclose(matrix[1:, 1:], single_ev.result.metrics[name], rtol=0, atol=1e-6, equal_nan=True)
    query, gallery = bundled
    for i in range(4):  # the backbone's column (and its diagonal): top-1 by brute force on the stored sets
        sim = query[i].embeddings @ gallery[0].embeddings.T
        np.fill_diagonal(sim, -np.inf)
        top1 = np.mean(gallery[0].labels[sim.argmax(axis=1)] == query[i].labels)
        assert bundle_ev.result.metrics["top1"][i, 0] == pytest.approx(top1)
    assert np.isnan(bundle_ev.result.metrics["top1"][0, 1:]).all()


BUNDLE_EMBED = ("embed", "--model", "tasks.onnx", "--dataset", "cifar10:test", "--shard-rows", "8", "--batch-size", "6",
                "--provider", "cpu", "--quiet", "--workers", "0")


@pytest.mark.parametrize("point", ["shards.after_progress:2", "shards.after_progress:7", "shards.before_swap:2"])
def test_bundle_embed_killed_resumes_every_set_to_the_same_bytes(run, tmp_path, point):
    write_data(tmp_path / "data", test_per_class=3)
    shutil.copy(run / "exports" / "tasks.onnx", tmp_path / "tasks.onnx")
    assert run_cli(*BUNDLE_EMBED, "--store", "ref", cwd=tmp_path).returncode == 0
    killed = run_cli(*BUNDLE_EMBED, "--store", "emb", cwd=tmp_path, env={ENV: point})
    assert killed.returncode == -9, killed.stderr
    again = run_cli(*BUNDLE_EMBED, "--store", "emb", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    for model_id in ("tasks.backbone", "tasks.task1", "tasks.task2", "tasks.task3"):
        (ref,), (got,) = ([p for p in (tmp_path / store / model_id).iterdir() if not p.name.startswith(".")]
                          for store in ("ref", "emb"))
        assert contents(got) == contents(ref), model_id
    assert ("reused" in again.stdout) == point.startswith("shards.before_swap")  # the set swapped in before the kill
    assert not leftovers(tmp_path / "emb")


def test_exports_dir_with_a_bundle_and_its_single_files_uses_the_bundle(run, tmp_path):
    write_data(tmp_path / "data", test_per_class=3)
    r = run_cli("evaluate", "--exports-dir", str(run / "exports"), "--provider", "cpu", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "task1.onnx, task2.onnx, task3.onnx left out: tasks.onnx holds the same tasks" in r.stderr
    with_backbone = json.loads((tmp_path / "reports" / "compatibility.json").read_text())
    assert with_backbone["models"] == ["tasks.backbone", "tasks.task1", "tasks.task2", "tasks.task3"]
    assert "tasks.backbone (frozen backbone, no prompts)" in (tmp_path / "reports" / "compatibility.md").read_text()
    r = run_cli("evaluate", "--models", str(run / "exports" / "tasks.onnx"), "--no-backbone", "--provider", "cpu",
                "--quiet", "--out", "tasks-only", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    tasks_only = json.loads((tmp_path / "tasks-only" / "compatibility.json").read_text())
    assert tasks_only["models"] == ["tasks.task1", "tasks.task2", "tasks.task3"]
    assert "frozen_backbone" not in tasks_only["protocol"]
    full = np.array(with_backbone["metrics"]["top1"], dtype=float)
    np.testing.assert_allclose(np.array(tasks_only["metrics"]["top1"], dtype=float), full[1:, 1:], equal_nan=True)


def test_bundle_embeds_and_evaluates_with_onnxruntime_alone(run, tmp_path):
    write_data(tmp_path / "data", test_per_class=3)
    shutil.copy(run / "exports" / "tasks.onnx", tmp_path / "tasks.onnx")
    (tmp_path / "blocker").mkdir()
    (tmp_path / "blocker" / "sitecustomize.py").write_text(BLOCK_TORCH)
    env = {"PYTHONPATH": str(tmp_path / "blocker")}
    embed = run_cli("embed", "--model", "tasks.onnx", "--dataset", "cifar10:test", "--provider", "cpu", "--quiet",
                    cwd=tmp_path, env=env)
    assert embed.returncode == 0, embed.stderr
    assert embed.stdout.count("wrote ") == 4
    evaluate = run_cli("evaluate", "--models", "tasks.onnx", "--provider", "cpu", "--quiet", cwd=tmp_path, env=env)
    assert evaluate.returncode == 0, evaluate.stderr
    report = json.loads((tmp_path / "reports" / "compatibility.json").read_text())
    assert report["models"] == ["tasks.backbone", "tasks.task1", "tasks.task2", "tasks.task3"]
    assert report["protocol"]["frozen_backbone"] == ["tasks.backbone"]


def test_read_props_refuses_a_truncated_file(run, tmp_path):
    raw = (run / "exports" / "tasks.onnx").read_bytes()
    (tmp_path / "cut.onnx").write_bytes(raw[:len(raw) // 2])
    with pytest.raises(InputError, match="truncated or corrupt"):
        read_props(tmp_path / "cut.onnx")
    with pytest.raises(InputError, match="no such ONNX file"):
        is_bundle(tmp_path / "missing.onnx")


def test_bench_embed_compares_the_bundle_with_its_single_files(run, tmp_path):
    r = run_cli("bench", "embed", "--model", str(run / "exports" / "tasks.onnx"), "--batch-sizes", "1,3",
                "--repeats", "1", "--json", "b.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["tasks"] == list(TASKS) and [row["batch_size"] for row in result["rows"]] == [1, 3]
    for row in result["rows"]:
        (bundle_s, singles_s, ratio), = row["rounds"]
        assert row["bundle_seconds"] == bundle_s and row["singles_seconds"] == singles_s
        assert ratio == row["ratio"] == row["worst_ratio"]
        assert row["bundle_images_tasks_per_s"] == pytest.approx(row["batch_size"] * 3 / bundle_s)
        assert row["ratio"] == pytest.approx(singles_s / bundle_s)
    singles = tmp_path / "singles"
    shutil.copytree(run / "exports", singles)
    shutil.copy(singles / "task1.onnx", singles / "task2.onnx")
    r = run_cli("bench", "embed", "--model", str(singles / "tasks.onnx"), "--singles-dir", str(singles),
                "--batch-sizes", "1", "--repeats", "1", cwd=tmp_path)
    assert r.returncode == 2 and "task2.onnx: not the bundle's task 2: checkpoint_sha256" in r.stderr


def test_bench_embed_against_another_file_of_the_task(run, tmp_path):
    """`--against`: one task's file against another of the same checkpoint (fp16 against fp32 here, as
    int8 against fp32), every round listed; a file of another task is refused."""
    from dpcompat.export.onnx_export import TaskExporter

    fp16 = TaskExporter(precision="fp16").export(run / "checkpoint" / "task1_checkpoint.pth", tmp_path / "h" / "task1.onnx")
    r = run_cli("bench", "embed", "--model", str(fp16.path), "--against", str(run / "exports" / "task1.onnx"),
                "--batch-sizes", "1,2", "--repeats", "3", "--json", "a.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "a.json").read_text())
    assert (result["precision"], result["baseline_precision"]) == ("fp16", "fp32")
    for row in result["rows"]:
        assert len(row["rounds"]) == 3 and row["worst_ratio"] == min(x for _, _, x in row["rounds"])
        assert row["ratio"] == pytest.approx(sorted(s / b for b, s, _ in row["rounds"])[1])
    r = run_cli("bench", "embed", "--model", str(fp16.path), "--against", str(run / "exports" / "task2.onnx"),
                "--batch-sizes", "1", cwd=tmp_path)
    assert r.returncode == 2 and "not from" in r.stderr
