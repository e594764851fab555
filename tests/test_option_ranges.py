"""Every numeric option has a declared range, checked by click while parsing (issue 21, "Option
ranges" and "Options silently replaced"): a value outside it is one line ``error: --option value: ...``,
exit code 2, before any work and with nothing written."""
import pytest

from test_validation_cli import assert_one_line, run

EMBED = ["embed", "--model", "m.onnx", "--dataset", "cifar10:test"]
EVALUATE = ["evaluate", "--from-store", "a,b"]
BIG = str(2**40)  # FAISS takes 32-bit integers: this one ended in an OverflowError traceback

OUT_OF_RANGE = [
    (EVALUATE + ["--index", "hnsw", "--hnsw-m", BIG], f"--hnsw-m {BIG}: expected an integer 2 to"),
    (EVALUATE + ["--index", "hnsw", "--hnsw-m", "1"], "--hnsw-m 1"),
    (EVALUATE + ["--index", "hnsw", "--ef-search", BIG], f"--ef-search {BIG}"),
    (EVALUATE + ["--index", "hnsw", "--ef-construction", BIG], f"--ef-construction {BIG}"),
    (EVALUATE + ["--index", "ivf", "--nlist", BIG], f"--nlist {BIG}"),
    (EVALUATE + ["--index", "ivf", "--nlist", "0"], "--nlist 0"),
    (EVALUATE + ["--index", "ivfpq", "--pq-m", "0"], "--pq-m 0"),
    (EVALUATE + ["--index", "ivfpq", "--pq-bits", "17"], "--pq-bits 17: expected an integer 1 to 16"),
    (EVALUATE + ["--index", "flat", "--index-depth", "4"], "--index-depth 4"),
    (EVALUATE + ["--backfill", "--backfill-steps", str(10**7)], f"--backfill-steps {10**7}: expected an integer 1 to 1000"),
    (EVALUATE + ["--backfill", "--backfill-steps", "0"], "--backfill-steps 0"),
    (EVALUATE + ["--backfill", "--backfill-seed", "-1"], "--backfill-seed -1"),
    (EVALUATE + ["--projections", "pca", "--projection-sample", "2"], "--projection-sample 2"),
    (EVALUATE + ["--k", BIG], f"--k {BIG}"),
    (EVALUATE + ["--threads", "0"], "--threads 0"),
    (EVALUATE + ["--workers", "100000"], "--workers 100000: expected an integer 0 to 256"),
    (EMBED + ["--engine", "ray", "--threads", "0"], "--threads 0: expected an integer 1 to 1024"),
    (EMBED + ["--threads", "100000"], "--threads 100000"),
    (EMBED + ["--workers", "100000"], "--workers 100000"),
    (EMBED + ["--workers", "-1"], "--workers -1"),
    (EMBED + ["--engine", "ray", "--gpus-per-actor", "nan"], "--gpus-per-actor nan: expected a finite number"),
    (EMBED + ["--engine", "ray", "--gpus-per-actor", "65"], "--gpus-per-actor 65: expected a finite number from 0 to 64"),
    (EMBED + ["--engine", "ray", "--gpus-per-actor", "-1"], "--gpus-per-actor -1"),
    (EMBED + ["--engine", "ray", "--actors", "0"], "--actors 0"),
    (EMBED + ["--engine", "ray", "--actors", "100000"], "--actors 100000"),
    (EMBED + ["--shard-rows", "0"], "--shard-rows 0"),
    (EMBED + ["--provider", "tensorrt", "--trt-workspace", "0"], "--trt-workspace 0: expected a finite number above 0"),
    (EMBED + ["--provider", "tensorrt", "--trt-workspace", "nan"], "--trt-workspace nan"),
    (["audit", "cifar10:test", "--sheet-pairs", "-5"], "--sheet-pairs -5: expected an integer 0 to"),
    (["audit", "cifar10:test", "--threshold", "nan"], "--threshold nan: expected a finite number from -1 to 1"),
    (["audit", "cifar10:test", "--threshold", "1.5"], "--threshold 1.5"),
    (["audit", "cifar10:test", "--k", "0"], "--k 0"),
    (["audit", "cifar10:test", "--batch-size", "0"], "--batch-size 0"),
    (["inspect", "m.pth", "--depth", "-1"], "--depth -1: expected an integer 0 to"),
    (["accuracy", "--batch-size", "0"], "--batch-size 0"),
    (["accuracy", "--batch-size", "-3"], "--batch-size -3"),
    (["accuracy", "--limit-per-class", "0"], "--limit-per-class 0"),
    (["accuracy", "--limit-per-class", "-1"], "--limit-per-class -1"),
    (["export", "--all", "--opset", "17"], "--opset 17"),
    (["export", "--task", "1", "--precision", "int8", "--calibration", "cifar10:test", "--calibration-count", "0"],
     "--calibration-count 0"),
    (["verify", "--task", "1", "--threads", "0"], "--threads 0"),
    (["train", "--seed", str(2**32)], f"--seed {2**32}"),
    (["train", "--workers", "100000"], "--workers 100000"),
    (["train", "--model", "resnet50"], "--model resnet50: unsupported model name 'resnet50'"),
    (["demo", "--distill-weight", "nan"], "--distill-weight nan: expected a finite number >= 0"),
    (["demo", "--distill-weight", "-1"], "--distill-weight -1"),
    (["bench", "export", "--model", "resnet50", "--workdir", "W"], "--model resnet50: unsupported model name"),
    (["bench", "embed", "--model", "m.onnx", "--photos", "-1"], "--photos -1"),
    (["bench", "embed", "--model", "m.onnx", "--workers", "1,100000"], "--workers 1,100000"),
    (["bench", "index", "--nlist", "0"], "--nlist 0"),
    (["bench", "index", "--depth", "0"], "--depth 0"),
    (["bench", "index", "--gallery", "0"], "--gallery 0"),
    (["bench", "evaluate", "--dim", "100000"], "--dim 100000"),
    (["bench", "store", "--batch-size", "0"], "--batch-size 0"),
    (["bench", "store", "--shard-rows", "0"], "--shard-rows 0"),
    (["bench", "store", "--small", "0"], "--small 0"),
]


@pytest.mark.parametrize("args, expected", OUT_OF_RANGE, ids=[" ".join(a) for a, _ in OUT_OF_RANGE])
def test_a_value_out_of_its_range_is_one_line(args, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line(run(*args), expected)
    assert list(tmp_path.iterdir()) == []
