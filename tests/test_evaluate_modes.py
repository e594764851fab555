"""Reports name how each model embeds (pool, selection, gather, query), old stores reading as defaults."""
import dataclasses
import json

from dpcompat.infer.data.datasets import dataset_key
from dpcompat.infer.store.sets import read_set
from onnx_fixtures import model_info, run_cli, write_data, write_model


def test_reports_label_the_reference_modes(tmp_path):
    write_data(tmp_path / "data", test_per_class=4)
    write_model(tmp_path / "exports" / "task1.onnx", task=1, dim=8)
    modes = dataclasses.replace(model_info(2, 8), gather="reference", query="notebook", selection="batchwise")
    write_model(tmp_path / "exports" / "task2.onnx", task=2, dim=8, info=modes)
    r = run_cli("evaluate", "--models", "exports/task1.onnx", "exports/task2.onnx", "--query", "cifar10:test",
                "--provider", "cpu", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "reports" / "compatibility.json").read_text())
    assert report["query"]["modes"] == {
        "task1": {"pool": "cls", "selection": "per-sample", "gather": "per-sample", "query": "cls", "output": "embedding"},
        "task2": {"pool": "cls", "selection": "batchwise", "gather": "reference", "query": "notebook",
                  "output": "embedding"}}
    md = (tmp_path / "reports" / "compatibility.md").read_text()
    assert "| task2 | embedding | cls | batchwise | reference | notebook |" in md
    stored = read_set(tmp_path / "embeddings" / "task2" / dataset_key("cifar10:test", tmp_path / "data"))
    assert (stored.manifest.model.gather, stored.manifest.model.query) == ("reference", "notebook")
