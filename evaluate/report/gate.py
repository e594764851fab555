"""The release gate: the decision for one deployed gallery model and one candidate, read from a report
folder's ``compatibility.json`` (its ``decision``), after the checks that make that decision apply
to the files at hand.

Exit codes: 0 keep the index, 3 backfill or re-index, 4 undecided (collect more queries), 2 bad input:
a missing or damaged report, a pair it does not decide, a model file whose sha256 differs from the
one the report recorded, or a report on generated data or a random backbone (unless allowed).

A model named by file (``--deployed exports/task3.onnx``) is the report's model of the file's stem,
or of ``--deployed-id`` when given too (a bundle's task: ``--deployed exports/tasks.onnx
--deployed-id tasks.task3``); its file's sha256 must equal the one the report recorded. A model named
by id alone (reports made with ``evaluate --from-store``) is not checked against any file: the gate
says so in a note, and a release pipeline that needs the check names the file.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..metrics.decision import (BACKFILL, COLLECT, KEEP, RECOMMENDATIONS, REINDEX, VERDICTS, Rule)
from ..metrics.significance import COMPATIBLE, NOT_COMPATIBLE, UNDECIDED
from .writer import JSON_FILE
from ...common.digest import file_sha256
from ...common.errors import InputError
from ...common.provenance import GENERATED, RANDOM

EXIT_CODES = {KEEP: 0, BACKFILL: 3, REINDEX: 3, COLLECT: 4}
_ALLOWED = {COMPATIBLE: (KEEP,), NOT_COMPATIBLE: (BACKFILL, REINDEX), UNDECIDED: (COLLECT,)}
_NUMBERS = ("value", "reference", "difference", "low", "high")


@dataclass(frozen=True)
class ModelRef:
    """A model as the command line names it: ``option`` (for messages), its ``file`` and/or ``model_id``."""

    option: str
    file: Optional[str] = None
    model_id: Optional[str] = None

    @property
    def id(self) -> str:
        return self.model_id or Path(self.file).stem


@dataclass
class GateResult:
    """``exit_code``, the one ``line`` to print, the report's ``pair`` object and ``notes`` for stderr."""

    exit_code: int
    line: str
    pair: dict
    notes: list[str]


def read_report(path: str | Path) -> tuple[Path, dict]:
    """(the JSON file, its content) of a report folder or of its ``compatibility.json``; InputError
    when missing, unreadable or without a decision."""
    path = Path(path)
    file = path / JSON_FILE if path.is_dir() else path
    if not file.is_file():
        raise InputError(f"--report {path}: no {JSON_FILE} there (run evaluate first, or name the report folder)")
    try:
        report = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InputError(f"{file}: not a readable report ({type(e).__name__}); rerun evaluate") from None
    decision = report.get("decision") if isinstance(report, dict) else None
    if not (isinstance(decision, dict) and isinstance(decision.get("rule"), dict)
            and isinstance(decision.get("pairs"), list) and isinstance(report.get("models"), list)):
        raise InputError(f"{file}: no decision in this report (made before the decision rule existed, or "
                         "damaged); rerun evaluate")
    return file, report


def demo_reasons(report: dict) -> list[str]:
    """Why a report is not a measurement of real models: generated data or a random backbone in its
    models' provenance or notes, or generated query/gallery data ([] for a real report)."""
    reasons = []
    for p in report.get("provenance") or []:
        if isinstance(p, dict) and str(p.get("data", "")).lower() == GENERATED:
            reasons.append(f"{p.get('model')} was trained on generated data")
        if isinstance(p, dict) and str(p.get("backbone", "")).lower() == RANDOM:
            reasons.append(f"{p.get('model')} has a random backbone")
    for note in report.get("notes") or []:
        if str(note).startswith(("GENERATED DATA", "RANDOM BACKBONE")):
            reasons.append(str(note).split(":")[0].lower())
    for side in ("query", "gallery"):
        spec = str((report.get(side) or {}).get("spec", ""))
        if spec.startswith("generated"):
            reasons.append(f"its {side} data is {spec}")
    if str(((report.get("protocol") or {}).get("demo") or {}).get("evaluation_data", "")) == GENERATED:
        reasons.append("the demo evaluated on generated data")
    return list(dict.fromkeys(reasons))


def _check_pair(file: Path, report: dict, pair: dict) -> None:
    """InputError unless the pair's verdict and recommendation follow from its own numbers and the rule."""
    rule_dict = report["decision"]["rule"]
    try:
        rule = Rule(metric=rule_dict.get("metric"), tolerance=float(rule_dict.get("tolerance")),
                    level=float(rule_dict.get("confidence")))
        numbers = [float(pair[key]) for key in _NUMBERS]
    except (InputError, KeyError, TypeError, ValueError) as e:
        raise InputError(f"{file}: a damaged decision ({e}); rerun evaluate") from None
    verdict, recommendation = pair.get("verdict"), pair.get("recommendation")
    if not all(map(math.isfinite, numbers)) or verdict not in VERDICTS or recommendation not in RECOMMENDATIONS:
        raise InputError(f"{file}: a damaged decision for {pair.get('query')} on {pair.get('gallery')}; rerun evaluate")
    if rule.verdict(numbers[3], numbers[4]) != verdict or recommendation not in _ALLOWED[verdict]:
        raise InputError(f"{file}: the decision for {pair['query']} on {pair['gallery']} does not follow from its own "
                         f"interval and rule (verdict {verdict}, recommendation {recommendation}); the file was "
                         "edited or damaged: rerun evaluate")


def _find_pair(file: Path, report: dict, deployed: ModelRef, candidate: ModelRef) -> dict:
    models = [str(m) for m in report["models"]]
    for ref in (deployed, candidate):
        if ref.id not in models:
            hint = f" (or name it with {ref.option}-id)" if ref.file else ""
            raise InputError(f"{ref.option} {ref.file or ref.id}: {ref.id} is not a model of {file} (models: "
                             f"{', '.join(models)}){hint}")
    if deployed.id == candidate.id:
        raise InputError(f"--candidate {candidate.id}: the same model as --deployed; name a newer candidate")
    if models.index(candidate.id) < models.index(deployed.id):
        raise InputError(f"--candidate {candidate.id}: older than the deployed {deployed.id} in the report's task "
                         f"order ({', '.join(models)}); the report decides a newer candidate on an older gallery")
    found = [p for p in report["decision"]["pairs"]
             if isinstance(p, dict) and p.get("gallery") == deployed.id and p.get("query") == candidate.id]
    if len(found) != 1:
        raise InputError(f"{file}: no decision for {candidate.id} on {deployed.id}'s gallery; rerun evaluate")
    return found[0]


def _check_file(file: Path, report: dict, ref: ModelRef) -> Optional[str]:
    """InputError when ``ref``'s file is not the one the report recorded; a note when there is no file."""
    records = {r.get("id"): r for r in report.get("model_records") or [] if isinstance(r, dict)}
    recorded = (records.get(ref.id) or {}).get("sha256")
    if not ref.file:
        return (f"note: {ref.option}-id {ref.id}: named by id, so no model file was checked against the sha256 "
                f"the report recorded ({str(recorded)[:12]}...); give {ref.option} FILE to check it")
    if not isinstance(recorded, str):
        raise InputError(f"{file}: records no sha256 for {ref.id} (a report made before they were recorded); "
                         "rerun evaluate")
    actual = file_sha256(ref.file)
    if actual != recorded:
        raise InputError(f"{ref.option} {ref.file}: its sha256 {actual[:12]}... differs from the one the report "
                         f"recorded for {ref.id} ({recorded[:12]}...): the report was made with another file; "
                         "rerun evaluate with this one")
    return None


def _rule_words(rule: dict) -> str:
    tol = f"{float(rule['tolerance']):g}"
    return (f"rule: {rule['metric']} C[i][j] \u2212 C[j][j], compatible when its {float(rule['confidence']):.0%} "
            f"paired bootstrap interval lies at or above \u2212{tol}")


def release_gate(report_path: str | Path, deployed: ModelRef, candidate: ModelRef, *,
                 allow_demo: bool = False, warn: Optional[Callable[[str], None]] = None) -> GateResult:
    """The decision for ``candidate``'s queries on ``deployed``'s gallery (see the module doc).

    Checks, in this order, each an InputError: the report, the pair, the model files' sha256, and
    (unless ``allow_demo``) that the report measures real models. Notes go to ``warn`` too.
    """
    for ref in (deployed, candidate):
        if not (ref.file or ref.model_id):
            raise InputError(f"{ref.option}: required (a model file, or {ref.option}-id for a stored model id)")
        if ref.file and not Path(ref.file).is_file():
            raise InputError(f"{ref.option} {ref.file}: no such file")
    file, report = read_report(report_path)
    pair = _find_pair(file, report, deployed, candidate)
    _check_pair(file, report, pair)
    notes = [n for n in (_check_file(file, report, ref) for ref in (deployed, candidate)) if n]
    reasons = demo_reasons(report)
    if reasons and not allow_demo:
        raise InputError(f"--report {report_path}: not a measurement of real models ({'; '.join(reasons)}); "
                         "the gate refuses it unless --allow-demo")
    if reasons:
        notes.append(f"note: --allow-demo: deciding on a report that is not a measurement of real models "
                     f"({'; '.join(reasons)})")
    for note in notes:
        (warn or (lambda _: None))(note)
    line = f"{pair.get('words')} ({_rule_words(report['decision']['rule'])})"
    return GateResult(exit_code=EXIT_CODES[pair["recommendation"]], line=line, pair=pair, notes=notes)
