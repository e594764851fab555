"""``gate``: the release decision for one deployed model's gallery and one candidate, read from a report."""
from __future__ import annotations

import json

import click


@click.command()
@click.option("--report", default="reports", show_default=True, type=click.Path(),
              help="An evaluate report folder (or its compatibility.json).")
@click.option("--deployed", type=click.Path(dir_okay=False), help="The deployed model's file (its gallery is indexed).")
@click.option("--deployed-id", help="Its model id in the report (default: the file's stem; alone: no file check).")
@click.option("--candidate", type=click.Path(dir_okay=False), help="The candidate model's file (its queries).")
@click.option("--candidate-id", help="Its model id in the report (default: the file's stem; alone: no file check).")
@click.option("--json", "as_json", is_flag=True, help="Print the pair's decision object as JSON.")
@click.option("--allow-demo", is_flag=True, help="Decide on a report of generated data or a random backbone.")
@click.pass_context
def gate(ctx, report, deployed, deployed_id, candidate, candidate_id, as_json, allow_demo):
    """Release decision for a candidate model on a deployed model's gallery, read from a report.

    Exit code 0: keep the index; 3: backfill or re-index; 4: undecided (collect more queries);
    2: bad input (no such report or pair, a model file other than the report's, demo data).
    """
    from ..evaluate.report.gate import ModelRef, release_gate

    result = release_gate(report, ModelRef("--deployed", deployed, deployed_id),
                          ModelRef("--candidate", candidate, candidate_id), allow_demo=allow_demo,
                          warn=lambda note: click.echo(note, err=True))
    click.echo(json.dumps(result.pair, indent=2) if as_json else result.line)
    ctx.exit(result.exit_code)
