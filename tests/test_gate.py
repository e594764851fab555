"""`evaluate --from-store` then `gate`, as a release pipeline runs them, on stored sets with known
answers: exit 0 keep, 3 backfill or re-index, 4 collect more queries, 2 bad input (no report, a pair
the report does not decide, a model file other than the report's, a damaged report, demo data)."""
import hashlib
import json
import re

import numpy as np
import pytest

from dpcompat.common.errors import InputError
from dpcompat.common.provenance import GENERATED_NOTE, RANDOM_BACKBONE_NOTE
from dpcompat.evaluate.report.gate import ModelRef, release_gate
from decision_fixtures import pairs_data, rotation, write_model
from onnx_fixtures import run_cli


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    """task2 = task1 (keep), task3 = task1 rotated (re-index), task4 = task1 on the classes of A and
    rotated on those of B, which the backfill order lists first (backfill 50%)."""
    root = tmp_path_factory.mktemp("gate")
    x, labels = pairs_data()
    b = labels % 2 == 1
    half = x.copy()
    half[b] = x[b] @ rotation(32)
    files = {m: write_model(root, m, e, labels, task=t)
             for t, (m, e) in enumerate({"task1": x, "task2": x.copy(), "task3": x @ rotation(32),
                                         "task4": half}.items(), 1)}
    (root / "order.txt").write_text("\n".join(map(str, [*np.flatnonzero(b), *np.flatnonzero(~b)])))
    r = run_cli("evaluate", "--from-store", "task1,task2,task3,task4", "--backfill", "--backfill-order", "order.txt",
                "--backfill-pairs", "task4:task1", "--quiet", cwd=root)
    assert r.returncode == 0, r.stderr
    return root, files, r


def gate(root, *args):
    return run_cli("gate", *args, cwd=root)


def test_the_summary_leads_with_the_rule_and_the_decision(known):
    root, _, r = known
    lines = r.stdout.splitlines()
    assert lines[0].startswith("DECISION RULE: A candidate (newer) model i may query")
    table = lines[lines.index("decision:") + 2:lines.index("decision:") + 8]
    assert [line.split()[:2] + [line.split("  ")[-1].strip()] for line in table] == [
        ["task1", "task2", "keep the index"], ["task1", "task3", "re-index"],
        ["task1", "task4", "backfill 50% of the gallery"], ["task2", "task3", "re-index"],
        ["task2", "task4", "backfill 50% of the gallery"], ["task3", "task4", "re-index"]]
    report = json.loads((root / "reports" / "compatibility.json").read_text())
    assert report["decision"]["rule"]["text"] in r.stdout
    sha = {m["id"]: m["sha256"] for m in report["model_records"]}
    assert sha == {m: hashlib.sha256(f.read_bytes()).hexdigest() for m, f in known[1].items()}
    assert all(p["gallery_sha256"] == sha[p["gallery"]] and p["query_sha256"] == sha[p["query"]]
               for p in report["decision"]["pairs"])
    curve = json.loads((root / "reports" / "production.json").read_text())["backfill"]["pairs"][0]
    backfill = next(p for p in report["decision"]["pairs"] if (p["gallery"], p["query"]) == ("task1", "task4"))
    f = json.loads((root / "reports" / "production.json").read_text())["backfill"]["fractions"]
    assert curve["curves"]["exact"]["top1"][f.index(0.5)] == backfill["backfill_value"] == 1.0
    assert curve["curves"]["exact"]["top1"][f.index(0.5) - 1] < 1.0  # the step before does not reach the rule


@pytest.mark.parametrize("deployed, candidate, code, start", [
    ("task1", "task2", 0, "keep the index: task2 on task1's gallery top-1 1.0000 vs task1's own 1.0000"),
    ("task1", "task3", 3, "re-index: task3 on task1's gallery top-1 0.0000"),
    ("task1", "task4", 3, "backfill 50% of the gallery (re-embedded by task4): then task4 on it top-1 1.0000"),
])
def test_exit_codes_and_one_line(known, deployed, candidate, code, start):
    root, files, _ = known
    r = gate(root, "--deployed", str(files[deployed]), "--candidate", str(files[candidate]))
    assert r.returncode == code, r.stderr
    assert len(r.stdout.splitlines()) == 1 and r.stdout.startswith(start) and "(rule: top1" in r.stdout
    assert r.stderr == ""
    as_json = gate(root, "--deployed", str(files[deployed]), "--candidate", str(files[candidate]), "--json")
    report = json.loads((root / "reports" / "compatibility.json").read_text())
    want = next(p for p in report["decision"]["pairs"] if (p["gallery"], p["query"]) == (deployed, candidate))
    assert as_json.returncode == code and json.loads(as_json.stdout) == want


def test_models_named_by_id_are_decided_with_a_note_that_no_file_was_checked(known):
    root, _, _ = known
    r = gate(root, "--deployed-id", "task1", "--candidate-id", "task2")
    assert r.returncode == 0 and r.stdout.startswith("keep the index")
    assert "--deployed-id task1: named by id, so no model file was checked" in r.stderr


def test_refusals_are_one_line_and_exit_2(known, tmp_path):
    root, files, _ = known
    other = tmp_path / "task2.onnx"
    other.write_bytes(b"another export of task 2")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    report = json.loads((root / "reports" / "compatibility.json").read_text())
    report["decision"]["pairs"][1]["verdict"] = "compatible"  # task3 on task1, whose interval says otherwise
    (damaged / "compatibility.json").write_text(json.dumps(report))
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "compatibility.json").write_text("{not json")
    t1, t2 = str(files["task1"]), str(files["task2"])
    by_cli = {
        ("--deployed", t1, "--candidate", str(other)): f"--candidate {other}: its sha256",
        ("--deployed", t2, "--candidate", t1): "--candidate task1: older than the deployed task2",
        ("--report", "none", "--deployed", t1, "--candidate", t2): "--report none: no compatibility.json there",
    }
    for args, message in by_cli.items():
        r = gate(root, *args)
        assert r.returncode == 2 and r.stdout == "", (args, r.stdout, r.stderr)
        assert r.stderr.startswith("error: ") and message in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    reports = root / "reports"
    cases = {
        (reports, (t1, None), (str(other), "task2")): "recorded for task2",
        (reports, (t1, None), (None, "task9")): "--candidate task9: task9 is not a model of",
        (reports, (t1, None), (t1, None)): "the same model",
        (reports, (t1, None), (None, None)): "--candidate: required",
        (reports, ("nowhere.onnx", None), (t2, None)): "--deployed nowhere.onnx: no such file",
        (garbage, (t1, None), (t2, None)): "not a readable report",
        (damaged, (t1, None), (None, "task3")): "does not follow from its own",
    }
    for (folder, deployed, candidate), message in cases.items():
        with pytest.raises(InputError, match=re.escape(message)):
            release_gate(folder, ModelRef("--deployed", *deployed), ModelRef("--candidate", *candidate))


def test_demo_data_is_refused_unless_allowed_and_a_small_sample_asks_for_more(tmp_path):
    x, labels = pairs_data(pairs=40)
    new = x.copy()
    new[[0, 2]] = x[[0, 2]] @ rotation(32)  # two of 80 queries miss on the old gallery: undecided at N = 80
    demo = {"data": "generated", "backbone": "random"}
    files = [write_model(tmp_path, "task1", x, labels, task=1, provenance=demo),
             write_model(tmp_path, "task2", new, labels, task=2, provenance=demo)]
    r = run_cli("evaluate", "--from-store", "task1,task2", "--backfill", "--quiet", cwd=tmp_path)
    assert r.returncode == 0 and "NOTE: GENERATED DATA" in r.stdout and "NOTE: RANDOM BACKBONE" in r.stdout
    notes = json.loads((tmp_path / "reports" / "compatibility.json").read_text())["notes"]
    assert notes == [GENERATED_NOTE, RANDOM_BACKBONE_NOTE]  # one wording: the demo's, evaluate's, production's
    assert json.loads((tmp_path / "reports" / "production.json").read_text())["notes"] == notes
    assert all(n in (tmp_path / "reports" / "production.md").read_text() for n in notes)
    args = ("--deployed", str(files[0]), "--candidate", str(files[1]))
    refused = run_cli("gate", *args, cwd=tmp_path)
    assert refused.returncode == 2 and "not a measurement of real models" in refused.stderr
    assert "unless --allow-demo" in refused.stderr and len(refused.stderr.splitlines()) == 1
    allowed = run_cli("gate", *args, "--allow-demo", "--json", cwd=tmp_path)
    pair = json.loads(allowed.stdout)
    assert allowed.returncode == 4 and "note: --allow-demo" in allowed.stderr
    assert (pair["verdict"], pair["recommendation"], pair["queries"]) == ("undecided", "collect", 80)
    assert pair["queries_needed"] > 80 and pair["words"].startswith(f"collect about {pair['queries_needed'] - 80}")


def test_one_model_is_evaluated_and_decides_nothing(known, tmp_path):
    root, files, _ = known
    r = run_cli("evaluate", "--from-store", "task1", "--out", str(tmp_path / "one"), "--quiet", cwd=root)
    assert r.returncode == 0, r.stderr
    assert "decision: no pair to decide (one model)" in r.stdout and "task1  1.0000 [1.0000, 1.0000]" in r.stdout
    md = (tmp_path / "one" / "compatibility.md").read_text()
    assert "No pair to decide" in md and "## Each model on its own gallery" in md
    g = run_cli("gate", "--report", str(tmp_path / "one"), "--deployed", str(files["task1"]), "--candidate-id",
                "task2", cwd=root)
    assert g.returncode == 2 and "task2 is not a model of" in g.stderr
