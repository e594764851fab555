"""The demo's smoke setting end to end (its report checked; the run is conftest's ``demo_run``), and the
bench commands' output."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("top1", "top5", "knn", "mAP@R", "R-precision")  # the default set; exact mAP: evaluate --full-map


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=900)


def test_demo_report_schema_and_matrices(demo_run):
    workdir, r = demo_run
    report = json.loads((workdir / "reports" / "compatibility.json").read_text())
    assert set(report) >= {"models", "query", "gallery", "metrics", "criteria", "cka", "notes"}
    models = report["models"]
    assert models == ["tasks.backbone", "tasks.task1", "tasks.task2"]  # the demo evaluates its bundle
    assert report["protocol"]["frozen_backbone"] == ["tasks.backbone"]
    for name in METRICS:
        c = report["metrics"][name]
        assert len(c) == len(models) and all(len(row) == len(models) for row in c)
        for i in range(len(models)):
            for j in range(len(models)):
                assert (c[i][j] is None) == (j > i)
                if j <= i:
                    assert 0.0 <= c[i][j] <= 1.0
        crit = report["criteria"][name]
        assert set(crit) >= {"AC", "AM", "empirical_criterion"} and "compatible" not in crit
        assert [[i, j] for i, j, _ in crit["empirical_criterion"]] == [[1, 0], [2, 0], [2, 1]]
        assert [ok for _, _, ok in crit["empirical_criterion"]] == [c[i][j] > c[j][j]
                                                                    for i, j in ((1, 0), (2, 0), (2, 1))]
        assert crit["AM"] == pytest.approx(np.mean([c[i][j] for i in range(3) for j in range(i + 1)]))
    assert [(p["gallery"], p["query"]) for p in report["decision"]["pairs"]] == [
        ("tasks.backbone", "tasks.task1"), ("tasks.backbone", "tasks.task2"), ("tasks.task1", "tasks.task2")]
    assert r.stdout.count("DECISION RULE: ") == 1
    cka = report["cka"]
    assert cka[0][1] == pytest.approx(cka[1][0]) and cka[0][0] == pytest.approx(1.0)


def test_demo_says_its_data_is_generated_everywhere(demo_run):
    workdir, r = demo_run
    assert "GENERATED DATA" in r.stdout and "RANDOM BACKBONE" in r.stdout
    report = json.loads((workdir / "reports" / "compatibility.json").read_text())
    assert any("GENERATED DATA" in n for n in report["notes"])
    assert "GENERATED DATA" in (workdir / "reports" / "compatibility.md").read_text().split("## ")[0]
    assert report["provenance"] == [{"model": m, "data": "generated", "backbone": "random"}
                                    for m in ("tasks.backbone", "tasks.task1", "tasks.task2")]


def test_demo_writes_every_stage_and_valid_pngs(demo_run):
    workdir, r = demo_run
    for stage in ("data", "train", "export", "verify", "embed", "evaluate"):
        assert f"== {stage}" in r.stdout
    assert (workdir / "output" / "checkpoint" / "task2_checkpoint.pth").is_file()
    assert sorted(p.name for p in (workdir / "exports").glob("*.onnx")) == ["task1.onnx", "task2.onnx", "tasks.onnx"]
    assert all(json.loads((workdir / "verify" / f"verify_{name}.json").read_text())["passed"]
               for name in ("task1", "task2", "tasks"))
    pngs = sorted((workdir / "reports").glob("*.png"))
    assert [p.stem for p in pngs] == sorted([*(f"heatmap_{m}" for m in (*METRICS, "cka")), "decision", "margins",
                                             "cmc", "negative_flips"])
    from PIL import Image

    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(p) as im:
            im.verify()
    assert "report:" in r.stdout and "compatibility.md" in r.stdout


def test_demo_fits_an_adapter_for_its_least_compatible_pair(demo_run):
    workdir, r = demo_run
    report = json.loads((workdir / "reports" / "compatibility.json").read_text())
    worst = min(report["decision"]["pairs"], key=lambda p: p["difference"])
    (row,) = report["adapters"]["rows"]
    assert (row["query"], row["gallery"]) == (worst["query"], worst["gallery"])
    assert row["adapter"]["kind"] == "orthogonal" and row["adapter"]["direction"] == "query"
    assert row["adapter"]["fit_location"].startswith("cifar100:train:")  # disjoint from the CIFAR-10 evaluation
    assert (workdir.parent / row["file"]).is_file()  # as the demo named it, from where it ran
    assert row["unadapted"]["difference"] == worst["difference"] and row["verdict"] in (
        "compatible", "not compatible", "undecided")
    assert [p["size"] for p in row["learning_curve"]["points"]] == [row["adapter"]["fit_rows"]]
    assert "== adapt" in r.stdout and f"{row['query']} \u2192 {row['gallery']} via orthogonal query adapter" in r.stdout
    assert "## Adapters" in (workdir / "reports" / "compatibility.md").read_text()
    assert 'id="adapters"' in (workdir / "reports" / "report.html").read_text()


def test_bench_embed_compares_torch_and_reports_fraction_of_peak(demo_run, tmp_path):
    workdir, _ = demo_run
    r = run_cli("bench", "embed", "--model", str(workdir / "exports" / "task2.onnx"), "--batch-sizes", "1,4",
                "--repeats", "2", "--compare-torch", "--checkpoint-dir", str(workdir / "output" / "checkpoint"),
                "--json", "b.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "b.json").read_text())
    assert [row["batch_size"] for row in result["onnxruntime"]] == [1, 4]
    for row in result["onnxruntime"]:
        assert row["images_per_s"] > 0 and 0 < row["fraction_of_peak"] < 2 and row["speedup_vs_torch"] > 0
    assert result["flops_per_image"] > 0 and result["matmul_peak"]["peak"] > 1e8
    assert result["machine"]["cores"] >= 1 and "onnxruntime-gpu" in result["machine"]["versions"]
    assert all(v > 0 for v in result["preprocessing_images_per_s_per_process"].values())


def test_bench_evaluate_and_export(tmp_path):
    r = run_cli("bench", "evaluate", "--models", "3", "--queries", "500", "--dim", "64", "--workdir", "be",
                "--repeats", "2", "--json", "e.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    e = json.loads((tmp_path / "e.json").read_text())
    assert e["cells"] == 6 and e["seconds"] > 0 and e["peak_extra_mib"] > 0 and len(e["rounds"]) == 2
    assert all(r["ratio"] == pytest.approx(r["seconds"] / r["products_seconds"]) for r in e["rounds"])
    ranking = [r["ranking_ns_per_similarity"] for r in e["rounds"]]
    assert e["ranking_ns_per_similarity"] == pytest.approx(np.median(ranking))
    assert e["products_seconds"] > 0 and e["ratio_to_products"] == pytest.approx(np.median([r["ratio"] for r in e["rounds"]]))
    assert set(e["stages"]) == {"cells", "bootstrap", "tests_and_criteria", "cka", "decision"} and e["resamples"] == 1000
    assert e["ranking_ns_per_similarity"] > 0 and "mAP" not in e["metrics"] and "cpu_flags" in e["machine"]
    assert e["separation"] == 0 and e["map_at_r_first_model"] < 0.3  # 10 classes, no structure: near chance
    r = run_cli("bench", "evaluate", "--models", "2", "--queries", "500", "--dim", "64", "--workdir", "bs",
                "--separation", "1.5", "--repeats", "1", "--json", "s.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "s.json").read_text())["map_at_r_first_model"] > 0.9
    r = run_cli("bench", "export", "--model", "vit_tiny_patch16_224", "--workdir", "bx", "--json", "x.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    x = json.loads((tmp_path / "x.json").read_text())
    assert x["seconds"] > 0 and 0.9 < x["size_ratio"] <= 1.05 and (tmp_path / "bx" / "task1.onnx").is_file()


def test_flops_of_vit_b_dualprompt():
    from dpcompat.infer.runtime.summary import dualprompt_flops
    from dpcompat.train.model import DualPromptConfig

    arch = DualPromptConfig().asdict()
    full = dualprompt_flops(arch, pool="mean")  # the query pass skips its last block's non-[CLS] work
    cls = dualprompt_flops(arch, pool="cls")  # both passes do
    assert 64e9 < cls < full < 70.3e9  # two ViT-B/16 passes of about 35 GFLOP each, less the skipped work
    assert (full - cls) / full == pytest.approx(0.0325, abs=0.004)
