"""Log one evaluation as one MLflow run (opt in: ``evaluate --mlflow [URI]``, the ``[mlflow]`` extra).

Everything logged is read from the report dict (the content of ``compatibility.json``) and the report
folder, so a run says exactly what the report says. ``mlflow`` is imported only here, only when asked.

Names (model ids are folder names: letters, digits, '.', '_', '-'; ``q_<i>.g_<j>``: query model i's
queries on gallery model j's gallery, the report's cell C[i][j]; metric names as :func:`mlflow_name`
writes them, ``mAP@R`` -> ``mAP_at_R``):

* params: ``models``; ``model.<id>.sha256`` and ``model.<id>.task`` (the report's model records);
  ``query.*`` / ``gallery.*`` (spec, location, fingerprint, count, skipped, labelled); ``protocol.*``;
  ``significance.*`` (resamples, seed, level); ``decision.*`` (the rule: metric, tolerance,
  confidence, resamples, seed, power, backfill steps and order).
* metrics (step 0): ``<metric>.q_<i>.g_<j>`` every cell j <= i; a model on its own gallery (i = j)
  with its interval's ends ``.low`` / ``.high``; for i > j the paired difference C[i][j] - C[j][j] as
  ``.diff`` with its interval's ends ``.diff.low`` / ``.diff.high`` (an interval of the difference,
  not of the cell) and McNemar's ``.mcnemar_p`` for right/wrong metrics; ``<metric>.AC`` / ``.BC`` /
  ``.FC`` (with ``.low`` / ``.high``), ``.AM``; ``negative_flip_rate.<metric>.q_<i>.g_<j>``; per
  decided pair ``decision.q_<i>.g_<j>.<value | reference | difference | low | high | backfill_fraction
  | backfill_value | queries_needed>`` where defined.
* tags: per decided pair ``decision.q_<i>.g_<j>`` (compatible / not compatible / undecided) and
  ``recommendation.q_<i>.g_<j>`` (keep / backfill / re-index / collect); ``dpcompat.generated_data``
  (``true`` when a model was trained on generated images), ``dpcompat.notes``, ``dpcompat.report``.
* artifacts: every file of the report folder.
"""
from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from ...common.errors import InputError

MAX_METRICS_PER_CALL, MAX_PARAMS_PER_CALL = 1000, 100  # MLflow's log_batch limits


def mlflow_module():
    """The mlflow package, or InputError naming the extra that installs it."""
    try:
        import mlflow
    except ImportError:
        raise InputError('--mlflow needs mlflow: pip install "dpcompat[mlflow]"') from None
    return mlflow


@dataclass(frozen=True)
class MlflowTarget:
    """Where a run goes: tracking ``uri`` (None: MLflow's own default, MLFLOW_TRACKING_URI or else its
    local store in the working directory, no server), ``experiment`` (None: MLflow's ``Default``) and
    the run's name (None: MLflow makes one up)."""

    uri: Optional[str] = None
    experiment: Optional[str] = None
    run_name: Optional[str] = None


@dataclass(frozen=True)
class LoggedRun:
    run_id: str
    experiment_id: str
    tracking_uri: str


def mlflow_name(name: str) -> str:
    """A metric's name as MLflow keys allow it: ``@`` as ``_at_`` (``mAP@R`` -> ``mAP_at_R``), any other
    character MLflow refuses as ``_``."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", name.replace("@", "_at_"))


def _cell(models: list[str], i: int, j: int) -> str:
    return f"q_{models[i]}.g_{models[j]}"


def _data_params(role: str, d: dict) -> dict[str, str]:
    keys = ("spec", "location", "fingerprint", "count", "skipped", "labelled")
    return {f"{role}.{k}": str(d[k]) for k in keys if k in d}


def run_params(report: dict) -> dict[str, str]:
    """The run's parameters (see the module doc)."""
    params = {"models": ",".join(report["models"]), **_data_params("query", report["query"]),
              **_data_params("gallery", report["gallery"])}
    for record in report.get("model_records", []):
        params.update({f"model.{record['id']}.{k}": str(record[k]) for k in ("sha256", "task") if k in record})
    params.update({f"protocol.{k}": ",".join(map(str, v)) if isinstance(v, list) else str(v)
                   for k, v in report["protocol"].items()})
    params.update({f"significance.{k}": str(report["significance"][k]) for k in ("resamples", "seed", "level")})
    rule = report.get("decision", {}).get("rule", {})
    params.update({f"decision.{k}": str(rule[k]) for k in ("metric", "tolerance", "confidence", "resamples", "seed",
                                                           "power") if k in rule})
    params.update({f"decision.backfill.{k}": str(v) for k, v in rule.get("backfill", {}).items()})
    return params


def _cell_metrics(report: dict) -> Iterator[tuple[str, Optional[float]]]:
    models = report["models"]
    for name, matrix in report["metrics"].items():
        for i, row in enumerate(matrix):
            for j, value in enumerate(row[:i + 1]):
                yield f"{mlflow_name(name)}.{_cell(models, i, j)}", value
    for name, c in report["criteria"].items():
        name = mlflow_name(name)
        for key in ("AC", "BC", "FC"):
            yield f"{name}.{key}", c[key]
            yield from zip((f"{name}.{key}.low", f"{name}.{key}.high"), c[f"{key}_interval"] or (None, None))
        yield f"{name}.AM", c["AM"]
        for i, own in enumerate(c.get("diagonal", [])):
            yield from zip((f"{name}.{_cell(models, i, i)}.low", f"{name}.{_cell(models, i, i)}.high"), own["interval"])
        for cell in c["cells"]:
            at = f"{name}.{_cell(models, cell['query'], cell['gallery'])}"
            yield f"{at}.diff", cell["difference"]
            yield from zip((f"{at}.diff.low", f"{at}.diff.high"), cell["interval"])
            if cell["mcnemar"] is not None:
                yield f"{at}.mcnemar_p", cell["mcnemar"]["p"]
    for name, matrix in report.get("negative_flip_rate", {}).items():
        for i, row in enumerate(matrix):
            for j, value in enumerate(row[:i]):
                yield f"negative_flip_rate.{mlflow_name(name)}.{_cell(models, i, j)}", value


def _decision_pairs(report: dict) -> Iterator[tuple[str, dict]]:
    models = report["models"]
    for pair in report.get("decision", {}).get("pairs", []):
        yield _cell(models, models.index(pair["query"]), models.index(pair["gallery"])), pair


def run_metrics(report: dict) -> dict[str, float]:
    """The run's metrics (see the module doc); undefined values (null in the report) are left out."""
    found = dict(_cell_metrics(report))
    for at, pair in _decision_pairs(report):
        for key in ("value", "reference", "difference", "low", "high", "backfill_fraction", "backfill_value",
                    "queries_needed"):
            found[f"decision.{at}.{key}"] = pair.get(key)
    return {k: float(v) for k, v in found.items() if v is not None}


def run_tags(report: dict, report_dir: Path) -> dict[str, str]:
    """The run's tags (see the module doc)."""
    tags = {}
    for at, pair in _decision_pairs(report):
        tags[f"decision.{at}"] = pair["verdict"]
        tags[f"recommendation.{at}"] = pair["recommendation"]
    generated = any(str(p.get("data", "")).lower() == "generated" for p in report.get("provenance", []))
    tags.update({"dpcompat.generated_data": str(generated).lower(), "dpcompat.report": str(report_dir.resolve())})
    if report.get("notes"):
        tags["dpcompat.notes"] = " | ".join(report["notes"])
    return tags


def _chunks(items: list, size: int) -> Iterator[list]:
    return (items[start:start + size] for start in range(0, len(items), size))


def _experiment_id(client, name: str) -> str:
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found is not None else client.create_experiment(name)


def log_evaluation(report: dict, report_dir: str | Path, target: MlflowTarget = MlflowTarget()) -> LoggedRun:
    """Log ``report`` (compatibility.json's content) and the files of ``report_dir`` as one finished run;
    InputError naming ``--mlflow`` when MLflow refuses (the run is then marked failed)."""
    mlflow = mlflow_module()
    from mlflow.entities import Metric, Param, RunTag

    report_dir = Path(report_dir)
    now = int(time.time() * 1000)
    params, metrics, tags = run_params(report), run_metrics(report), run_tags(report, report_dir)
    run_id = None
    try:
        client = mlflow.MlflowClient(tracking_uri=target.uri)
        experiment_id = _experiment_id(client, target.experiment or "Default")
        run_id = client.create_run(experiment_id, start_time=now, run_name=target.run_name).info.run_id
        for part in _chunks([Param(k, v) for k, v in params.items()], MAX_PARAMS_PER_CALL):
            client.log_batch(run_id, params=part)
        for part in _chunks([RunTag(k, v) for k, v in tags.items()], MAX_PARAMS_PER_CALL):
            client.log_batch(run_id, tags=part)
        for part in _chunks([Metric(k, v, now, 0) for k, v in metrics.items()], MAX_METRICS_PER_CALL):
            client.log_batch(run_id, metrics=part)
        client.log_artifacts(run_id, str(report_dir))
        client.set_terminated(run_id, "FINISHED")
        return LoggedRun(run_id, experiment_id, client.tracking_uri)
    except mlflow.exceptions.MlflowException as e:
        if run_id is not None:
            with contextlib.suppress(mlflow.exceptions.MlflowException):
                client.set_terminated(run_id, "FAILED")
        raise _refused(mlflow, target, e) from None


def log_report_folder(report_dir: str | Path, target: MlflowTarget = MlflowTarget()) -> LoggedRun:
    """:func:`log_evaluation` of the report folder ``report_dir`` as evaluate wrote it (its
    ``compatibility.json`` read back: the run logs what the report says, its decision included)."""
    path = Path(report_dir) / "compatibility.json"
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable report ({e})") from None
    return log_evaluation(report, report_dir, target)


def _refused(mlflow, target: MlflowTarget, e: Exception) -> InputError:
    return InputError(f"--mlflow {target.uri or mlflow.get_tracking_uri()}: {str(e).splitlines()[0]}")


def check_target(target: MlflowTarget) -> None:
    """InputError, before any work, when mlflow is missing or the tracking store cannot be opened
    (a local store is created then, as MLflow does on first use)."""
    mlflow = mlflow_module()
    try:
        mlflow.MlflowClient(tracking_uri=target.uri).search_experiments(max_results=1)
    except (mlflow.exceptions.MlflowException, OSError) as e:
        raise _refused(mlflow, target, e) from None


def mlflow_target(uri: Optional[str], *, experiment: Optional[str] = None,
                  run_name: Optional[str] = None) -> Optional[MlflowTarget]:
    """evaluate's ``--mlflow [URI]`` (None: not given; ``""``: given bare, MLflow's default store),
    ``--mlflow-experiment`` and ``--mlflow-run-name`` as a target checked by :func:`check_target`;
    None without ``--mlflow``. A URI ending in ``.onnx`` is a model file that a bare ``--mlflow``
    swallowed from the command line: refused."""
    if uri is None:
        if experiment or run_name:
            raise InputError("--mlflow-experiment and --mlflow-run-name need --mlflow")
        return None
    if uri.endswith(".onnx"):
        raise InputError(f"--mlflow {uri}: a model file, not a tracking URI; put --mlflow after the model files, "
                         "or give it a URI (--mlflow sqlite:///mlflow.db)")
    target = MlflowTarget(uri=uri or None, experiment=experiment, run_name=run_name)
    check_target(target)
    return target
