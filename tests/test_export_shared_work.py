"""Work done once: the tasks of one run share one trace (``TaskExporter``), and verifying a bundle of T
tasks runs no more passes than verifying its T single files (the frozen backbone's query pass and the
bundle's runs computed once per distinct batch; a batch-independent reference computed once)."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import dpcompat.export.onnx_export as onnx_export
import dpcompat.export.verify as verify
import dpcompat.export.verify_bundle as verify_bundle_module
from dpcompat.export.onnx_export import TaskExporter, file_sha256
from dpcompat.export.verify import Inputs
from dpcompat.export.verify_file import format_reports, verify_file
from dpcompat.infer.runtime.metadata import ModelInfo
from dpcompat.train.checkpoint import checkpoint_path
from dpcompat.train.model import DualPromptViT
from test_export_bundle import ARCH, IMAGES, TASKS, _save, make_run
from train_fixtures import tiny_model


@pytest.fixture(scope="module")
def bundle_run(tmp_path_factory):
    """test_export_bundle's three tasks on one backbone: checkpoints, single files, bundle."""
    return make_run(tmp_path_factory.mktemp("bundle"))


def _outputs(path, images=IMAGES):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": images})


def _count_traces(monkeypatch) -> list:
    traced = []
    real = onnx_export.trace_graph

    def counting(*args, **kwargs):
        traced.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(onnx_export, "trace_graph", counting)
    return traced


def test_the_tasks_of_a_run_share_one_trace_and_equal_their_own_traces(bundle_run, tmp_path, monkeypatch):
    """`export --all` (the fixture) traced once; each file equals the task traced alone, and carries
    its own task's metadata; a checkpoint on another backbone is traced on its own."""
    run = bundle_run
    traced = _count_traces(monkeypatch)
    alone = TaskExporter().export(checkpoint_path(run / "checkpoint", 2), tmp_path / "alone2.onnx")
    assert len(traced) == 1
    for got, want in zip(_outputs(run / "exports" / "task2.onnx"), _outputs(alone.path)):
        np.testing.assert_array_equal(got, want)
    for task in TASKS:
        props = {p.key: p.value for p in onnx.load(run / "exports" / f"task{task}.onnx").metadata_props}
        info = ModelInfo.from_props(props, "test")
        assert (info.task, info.checkpoint_sha256) == (task, file_sha256(checkpoint_path(run / "checkpoint", task)))
    prompts = [_outputs(run / "exports" / f"task{t}.onnx")[0] for t in TASKS]
    assert not np.allclose(prompts[0], prompts[1]), "the tasks' files must differ (their own prompts and keys)"

    exporter = TaskExporter()
    traced.clear()
    other = tiny_model(99, **ARCH)  # another backbone
    _save(tmp_path / "other", 7, other)
    for task in TASKS:
        exporter.export(checkpoint_path(run / "checkpoint", task), tmp_path / f"task{task}.onnx")
    exporter.export(checkpoint_path(tmp_path / "other", 7), tmp_path / "task7.onnx")
    exporter.export(checkpoint_path(run / "checkpoint", 1), tmp_path / "again1.onnx")
    assert len(traced) == 2  # one per backbone
    with torch.no_grad():
        want = other.embed(torch.from_numpy(IMAGES))[0].numpy()
    np.testing.assert_allclose(_outputs(tmp_path / "task7.onnx")[0], want, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(_outputs(tmp_path / "again1.onnx")[0], _outputs(tmp_path / "task1.onnx")[0])


class _Passes:
    """Counts image passes through the backbone: PyTorch's (rows of every ``DualPromptViT.tokens`` call)
    and onnxruntime's (images of every run times the passes its file makes per image)."""

    def __init__(self, monkeypatch):
        self.torch = self.onnx = 0
        self.query_rows = 0
        real_tokens, real_query = DualPromptViT.tokens, DualPromptViT.query

        def tokens(model, x, *args, **kwargs):
            self.torch += x.shape[0]
            return real_tokens(model, x, *args, **kwargs)

        def query(model, x, *args, **kwargs):
            self.query_rows += x.shape[0]
            return real_query(model, x, *args, **kwargs)

        monkeypatch.setattr(DualPromptViT, "tokens", tokens)
        monkeypatch.setattr(DualPromptViT, "query", query)
        for module in (verify, verify_bundle_module):
            monkeypatch.setattr(module, "run_model", self._counting(module.run_model))

    def _counting(self, real):
        def run_model(session, images, *args, **kwargs):
            outputs = {o.name for o in session.get_outputs()}
            tasks = session.get_outputs()[0].shape[1] if "query" in outputs else 1
            self.onnx += len(images) * (tasks + 1)  # one query pass and one prompted pass per task
            return real(session, images, *args, **kwargs)

        return run_model


def test_verifying_a_bundle_costs_no_more_than_its_single_files(bundle_run, monkeypatch):
    """Same inputs and batch sizes: the bundle runs at most its single files' passes on each side, the
    PyTorch query pass runs once per image for all tasks, and every report says what it checked."""
    run = bundle_run
    inputs, sizes = Inputs(count=12), (1, 5, 12)
    singles = _Passes(monkeypatch)
    for task in TASKS:
        assert all(r.passed for r in verify_file(run / "exports" / f"task{task}.onnx", run / "checkpoint",
                                                 inputs=inputs, batch_sizes=sizes))
    monkeypatch.undo()
    bundle = _Passes(monkeypatch)
    reports = verify_file(run / "exports" / "tasks.onnx", run / "checkpoint", inputs=inputs, batch_sizes=sizes)
    assert [r.context["task"] for r in reports] == [*TASKS, "backbone"] and all(r.passed for r in reports)
    t, n = len(TASKS), inputs.count
    # singles: per task, PyTorch once (query + prompted pass), onnxruntime at each batch size (2 passes)
    assert (singles.torch, singles.onnx) == (t * 2 * n, t * len(sizes) * 2 * n)
    # the bundle: one PyTorch query pass for every task and the query report, then one prompted pass per
    # task; one bundle run (T + 1 passes) per batch size, read by every report
    assert (bundle.torch, bundle.query_rows, bundle.onnx) == ((t + 1) * n, n, len(sizes) * (t + 1) * n)
    assert bundle.torch + bundle.onnx <= singles.torch + singles.onnx
    header = format_reports(reports).splitlines()[0]
    assert header.endswith(": 12 random images (uniform pixels, seed 0), batch sizes 1, 5, 12"), header


def test_a_batch_dependent_reference_still_runs_at_every_batch_size(bundle_run, tmp_path, monkeypatch):
    """Batchwise selection makes the reference depend on its batch: it is computed at each size."""
    run = bundle_run
    path = TaskExporter("batchwise").export(checkpoint_path(run / "checkpoint", 1), tmp_path / "b.onnx").path
    passes = _Passes(monkeypatch)
    reports = verify_file(path, run / "checkpoint", inputs=Inputs(count=8), batch_sizes=(1, 8))
    assert reports[0].passed
    assert passes.torch == 2 * 2 * 8  # a query and a prompted pass of the 8 images at each of the 2 sizes
