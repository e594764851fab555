"""evaluate --mlflow: one run per evaluation in a local store under tmp_path (never the network), read
back with MLflow's own client."""
import json
import sys

import pytest

from dpcompat.common.errors import InputError
from dpcompat.evaluate.pipeline import evaluate_sets
from dpcompat.evaluate.report import mlflow_log
from dpcompat.evaluate.report.writer import report_dict, write_reports
from dpcompat.infer.data.datasets import dataset_key, dataset_location
from dpcompat.infer.store.sets import read_set, set_path
from onnx_fixtures import run_cli, write_random_set

mlflow = pytest.importorskip("mlflow", reason="mlflow (the [mlflow] extra) is not installed")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """(compatibility.json's content, the report folder, a tracking URI) of one evaluation of three models;
    one store for the module's runs (creating an MLflow database takes seconds)."""
    root = tmp_path_factory.mktemp("mlflow")
    sets = [read_set(write_random_set(root / "store" / f"m{t}" / "set", f"m{t}", n=60, seed=t + 1).path)
            for t in range(3)]
    ev = evaluate_sets(sets, sets)
    write_reports(ev, root / "rep")
    report = json.loads((root / "rep" / "compatibility.json").read_text())
    assert report == json.loads(json.dumps(report_dict(ev)))  # what is logged is compatibility.json's content
    return report, root / "rep", f"sqlite:///{root / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow puts a local store's artifacts under the working directory


def test_an_evaluation_is_one_run_read_back_with_mlflows_client(evaluated, monkeypatch):
    report, rep, uri = evaluated
    monkeypatch.setattr(mlflow_log, "MAX_METRICS_PER_CALL", 50)  # several batches, as a 10-model report needs
    monkeypatch.setattr(mlflow_log, "MAX_PARAMS_PER_CALL", 10)
    target = mlflow_log.MlflowTarget(uri=uri, experiment="gallery-compat", run_name="nightly")
    mlflow_log.check_target(target)
    logged = mlflow_log.log_evaluation(report, rep, target)
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(logged.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "nightly"
    assert client.get_experiment(run.info.experiment_id).name == "gallery-compat"
    p, m, t = run.data.params, run.data.metrics, run.data.tags
    assert p["models"] == "m0,m1,m2" and p["model.m1.sha256"] == "0" * 64 and p["model.m2.task"] == "3"
    assert p["query.fingerprint"] == "f" * 64 and p["query.count"] == "60" and p["query.labelled"] == "True"
    assert p["protocol.k"] == "5" and p["significance.seed"] == str(report["significance"]["seed"])
    assert p["significance.resamples"] == str(report["significance"]["resamples"])
    assert (p["decision.metric"], p["decision.tolerance"]) == ("top1", "0.01")
    assert m["top1.q_m2.g_m0"] == pytest.approx(report["metrics"]["top1"][2][0])
    assert "top1.q_m0.g_m2" not in m  # above the diagonal: no cell
    cell = next(c for c in report["criteria"]["top1"]["cells"] if (c["query"], c["gallery"]) == (2, 0))
    assert (m["top1.q_m2.g_m0.diff.low"], m["top1.q_m2.g_m0.diff.high"]) == pytest.approx(tuple(cell["interval"]))
    assert m["top1.q_m2.g_m0.diff"] == pytest.approx(cell["difference"]) and "top1.q_m2.g_m0.mcnemar_p" in m
    own = report["criteria"]["mAP@R"]["diagonal"][1]["interval"]
    assert (m["mAP_at_R.q_m1.g_m1.low"], m["mAP_at_R.q_m1.g_m1.high"]) == pytest.approx(tuple(own))
    pairs = report["decision"]["pairs"]
    assert len(pairs) == 3 and all(f"decision.q_{d['query']}.g_{d['gallery']}" in t for d in pairs)
    pair = next(d for d in pairs if (d["query"], d["gallery"]) == ("m2", "m0"))
    assert (t["decision.q_m2.g_m0"], t["recommendation.q_m2.g_m0"]) == (pair["verdict"], pair["recommendation"])
    assert (m["decision.q_m2.g_m0.low"], m["decision.q_m2.g_m0.high"]) == pytest.approx((pair["low"], pair["high"]))
    assert t["dpcompat.generated_data"] == "false"
    files = {a.path for a in client.list_artifacts(logged.run_id)}
    assert {"compatibility.json", "compatibility.md", "compatibility.csv"} <= files
    assert len(m) == len(mlflow_log.run_metrics(report)) > 150 and len(p) == len(mlflow_log.run_params(report)) > 30


def test_each_evaluation_is_a_run_of_its_own_and_generated_data_is_tagged(evaluated):
    report, rep, uri = evaluated
    generated = {**report, "provenance": [{**report["provenance"][0], "data": "generated"}, *report["provenance"][1:]],
                 "notes": ["GENERATED DATA: ..."]}
    runs = [mlflow_log.log_evaluation(r, rep, mlflow_log.MlflowTarget(uri=uri)) for r in (report, generated)]
    client = mlflow.MlflowClient(tracking_uri=uri)
    assert runs[0].run_id != runs[1].run_id and runs[0].experiment_id == runs[1].experiment_id
    assert client.get_experiment(runs[0].experiment_id).name == "Default"
    tags = client.get_run(runs[1].run_id).data.tags
    assert tags["dpcompat.generated_data"] == "true" and tags["dpcompat.notes"] == "GENERATED DATA: ..."
    assert not [k for k in client.get_run(runs[0].run_id).data.tags if k.startswith("dpcompat.notes")]


def test_without_mlflow_the_option_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    with pytest.raises(InputError, match=r'^--mlflow needs mlflow: pip install "dpcompat\[mlflow\]"$'):
        mlflow_log.check_target(mlflow_log.MlflowTarget())


def test_a_store_mlflow_refuses_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    target = mlflow_log.MlflowTarget(uri=f"sqlite:///{tmp_path / 'file' / 'sub' / 'mlflow.db'}")
    with pytest.raises(InputError, match=r"^--mlflow sqlite:///.*file/sub/mlflow.db: ") as e:
        mlflow_log.check_target(target)
    assert "\n" not in str(e.value)


def test_evaluate_mlflow_logs_the_report_folder(tmp_path, evaluated):
    _, _, uri = evaluated
    for t in range(2):
        write_random_set(set_path(tmp_path / "emb", f"m{t}", dataset_key("cifar10:test", "data")), f"m{t}", n=60,
                         seed=t + 1)
    r = run_cli("evaluate", "--from-store", "m0,m1", "--store", "emb", "--out", "rep", "--quiet", "--mlflow", uri,
                "--mlflow-experiment", "cli", "--mlflow-run-name", "from the command line", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    said = r.stdout.splitlines()[-1]
    assert said.startswith("mlflow: run ") and said.endswith(f" at {uri}")
    run = mlflow.MlflowClient(tracking_uri=uri).get_run(said.split()[2])
    assert run.info.run_name == "from the command line" and run.data.params["models"] == "m0,m1"
    assert run.data.params["query.location"] == dataset_location("cifar10:test", "data")
    for args, message in [(("task1.onnx", "--mlflow", "task2.onnx"), "error: --mlflow task2.onnx: a model file, not a "
                                                                       "tracking URI; put --mlflow after the model files"),
                          (("--from-store", "m0", "--mlflow-run-name", "x"),
                           "error: --mlflow-experiment and --mlflow-run-name need --mlflow")]:
        bad = run_cli("evaluate", *args, "--store", "emb", "--out", "rep2", cwd=tmp_path)
        assert bad.returncode == 2 and bad.stderr.startswith(message) and bad.stderr.count("\n") == 1
    assert not (tmp_path / "rep2").exists()


def test_mlflow_is_an_extra_the_production_install_does_not_pull():
    import configparser
    from pathlib import Path

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    requires = lambda text: {line.split(">")[0].split("[")[0].strip() for line in text.split("\n") if line.strip()}  # noqa: E731
    assert "mlflow" not in requires(cfg["options"]["install_requires"])
    extras = cfg["options.extras_require"]
    assert "mlflow" in requires(extras["mlflow"]) and "mlflow" in requires(extras["dev"])
