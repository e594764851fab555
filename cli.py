"""dpcompat command line: the group, its error mapping and ``main``; the commands live in ``commands/``
(one module per stage), their shared options and parameter types in ``commands/options.py``.

Each command parses its options, calls the library and prints. Bad input raises ``InputError``,
which becomes one line on stderr and exit code 2 (``--debug`` shows the traceback instead).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

# OpenBLAS's idle threads spin on a core for up to 2^28 cycles (~0.1 s) after each product, taking it from
# the ranking that runs between products; 2^4 cycles (its least) puts them to sleep at once. Read when
# numpy loads, so before any import of it.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

if not __package__:
    # `python cli.py` (or torchrun cli.py) from a checkout: run as dpcompat.cli (PEP 366) on this checkout's code.
    import runpy

    runpy.run_path(str(Path(__file__).resolve().with_name("checkout.py")))["import_checkout"]()
    __package__ = "dpcompat"

import click

from .commands import adapt, bench, demo, embed, evaluate, export, gate, study, train
from .commands.options import BadValue
from .common.errors import InputError
from .common.memory import keep_freed_memory


def _usage_line(e: click.UsageError) -> str:
    """click's usage error as our one line: ``--option: what is wrong``."""
    if isinstance(e, click.BadParameter) and e.param is not None:
        name = e.param.opts[0] if e.param.opts else e.param.human_readable_name
        if isinstance(e, click.MissingParameter):
            return f"{name}: required"
        return f"{name}{' ' if isinstance(e, BadValue) else ': '}{e.message.rstrip('.')}"
    if isinstance(e, click.NoSuchOption):
        hint = f" (did you mean {', '.join(e.possibilities)}?)" if e.possibilities else ""
        return f"{e.option_name}: no such option{hint}"
    return e.format_message().rstrip(".")


class _Group(click.Group):
    """Every user-caused failure -- our InputError, click's usage errors, a file the OS will not
    write -- becomes one line ``error: ...`` on stderr and exit code 2."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as e:
            click.echo(f"error: {_usage_line(e)}", err=True)
            raise click.exceptions.Exit(2) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.UsageError, InputError, OSError) as e:
            message = _error_line(e)
            if message is None or ctx.meta.get("debug"):
                raise
        click.echo(f"error: {message}", err=True)
        ctx.exit(2)


def _error_line(e: Exception) -> str | None:
    """The one line for a user-caused failure; None for an OSError that names no file (a bug)."""
    if isinstance(e, click.UsageError):
        return _usage_line(e)
    if isinstance(e, InputError):
        return str(e)
    if e.filename is None:
        return None
    from .common.outputs import os_reason

    return f"{e.filename}: {os_reason(e)}"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Train DualPrompt models, export them to ONNX and measure backward compatibility."""
    ctx.meta["debug"] = debug
    keep_freed_memory()


for command in (train.train, train.accuracy, export.export_command, export.verify_command, embed.embed,
                evaluate.evaluate, adapt.adapt, gate.gate, demo.doctor, study.audit, study.inspect_command, demo.demo,
                bench.bench):
    cli.add_command(command)


def main() -> None:
    cli(prog_name=Path(sys.argv[0]).name)  # `cli.py` from a checkout, `dpcompat` when installed


if __name__ == "__main__":
    main()
