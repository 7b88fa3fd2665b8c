"""The ``fslm-edge`` command line. The only place errors become exit codes."""

from __future__ import annotations

import json
import os
import sys

import click

from .config import parse_override_items
from .errors import FslmError, InputError
from .fileio import SPACE_ERRNOS

EXIT_INTERRUPTED = 2  # the contract: bad input and interrupts exit 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a tool killed by a closed pipe


# Commands defined outside this module, imported only when run (or listed by --help), so that
# `fslm-edge run` never imports the evaluation or build side.
LAZY_COMMANDS = {
    "eval": ("fslm_edge.evaluation.cli", "eval_command"),
    "build": ("fslm_edge.convert.cli", "build"),
    "export-lora": ("fslm_edge.convert.cli", "export_lora_cmd"),
    "merge": ("fslm_edge.convert.cli", "merge"),
    "quantize": ("fslm_edge.convert.cli", "quantize"),
    "distill": ("fslm_edge.convert.cli", "distill"),
}


def _one_line_warnings(message, category, filename, lineno, file=None, line=None):
    click.echo(f"warning: {message}", err=True)


class _Cli(click.Group):
    """Turns FslmError into one line on stderr and its exit code; finds the
    lazily imported commands."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, name: str):
        command = super().get_command(ctx, name)
        if command is None and name in LAZY_COMMANDS:
            module, attr = LAZY_COMMANDS[name]
            import importlib

            command = getattr(importlib.import_module(module), attr)
        return command

    def invoke(self, ctx: click.Context):
        debug = "--debug" in sys.argv[1:] or bool(os.environ.get("FSLM_EDGE_DEBUG"))
        if not debug:
            import warnings

            warnings.showwarning = _one_line_warnings
        try:
            return super().invoke(ctx)
        except FslmError as exc:
            if debug:
                raise
            click.echo(f"error: {_printable(str(exc))}", err=True)
            ctx.exit(exc.exit_code)
        except BrokenPipeError:
            # the reader went away (`| head`): stop quietly, the way a C tool dies of SIGPIPE
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(EXIT_BROKEN_PIPE)
        except KeyboardInterrupt:
            if debug:
                raise
            click.echo("error: interrupted (Ctrl-C); nothing was written", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except (OSError, MemoryError) as exc:
            if debug:
                raise
            if isinstance(exc, OSError) and exc.errno in SPACE_ERRNOS:
                where = f" writing {exc.filename}" if exc.filename else ""
                click.echo(f"error: no space left on device{where}; free some space and run again", err=True)
                ctx.exit(1)
            click.echo(f"error: {type(exc).__name__}: {_printable(str(exc))} (run with --debug for the traceback)",
                       err=True)
            ctx.exit(1)


def _printable(text: str) -> str:
    """One line, whatever bytes a hostile name or message holds."""
    text = text.encode("utf-8", errors="backslashreplace").decode("utf-8")
    return text.replace("\n", "\\n").replace("\r", "\\r")


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks and llama.cpp logs.")
@click.version_option(package_name="fslm-edge")
def main(debug: bool) -> None:
    """Run stacks of small language models offline."""
    if debug:
        os.environ["FSLM_EDGE_VERBOSE"] = "1"


def parse_overrides(items: tuple[str, ...]) -> dict[str, object]:
    return parse_override_items(items, "--set")


def with_gpu_layers(overrides: dict[str, object], gpu_layers: int | None) -> dict[str, object]:
    return overrides if gpu_layers is None else {**overrides, "stack.gpu_layers": gpu_layers}


def read_question(question: str | None) -> str:
    if question == "-" or (question is None and not sys.stdin.isatty()):
        try:
            question = sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"the question on stdin is not UTF-8 text (byte {exc.start}); "
                             "convert it, e.g. with iconv -t UTF-8") from None
    elif question is not None:
        try:
            question.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8 arrive as lone surrogates
            raise InputError("the question is not UTF-8 text; pass it in UTF-8") from None
    if question is None:
        raise InputError("no question: pass it as an argument, or '-' to read it from stdin")
    if not question.strip():
        raise InputError("the question is empty; pass some text (or '-' to read it from stdin)")
    return question


@main.command()
@click.argument("stack_file", metavar="STACK")
@click.argument("question", required=False)
@click.option("--quiet", "-q", is_flag=True, help="Print only the final answer.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON event per line.")
@click.option("--show-prompts", is_flag=True, help="Show each stage's rendered prompt.")
@click.option("--set", "sets", multiple=True, metavar="STAGE.KEY=VALUE",
              help="Override a stack setting, e.g. --set answer.max_tokens=64 (also *.key, stack.key).")
@click.option("--choice", "choices", multiple=True, metavar="TEXT",
              help="The answer must be exactly one of these (repeat the option); enforced while sampling.")
@click.option("--gpu-layers", type=int, default=None, metavar="N",
              help="Offload N layers to the GPU (-1: all); same as --set stack.gpu_layers=N.")
def run(stack_file: str, question: str | None, quiet: bool, as_json: bool, show_prompts: bool,
        sets: tuple[str, ...], choices: tuple[str, ...], gpu_layers: int | None) -> None:
    """Run STACK (a stack file or a model reference) on QUESTION ('-' or no QUESTION with a pipe: read stdin)."""
    from .events import StackResult, event_to_dict
    from .stack import Stack

    text = read_question(question)
    overrides = with_gpu_layers(parse_overrides(sets), gpu_layers)
    with Stack.load(stack_file, overrides) as stack:
        events = stack.stream(text, choices=list(choices) or None)
        if as_json:
            for event in events:
                click.echo(json.dumps(event_to_dict(event), ensure_ascii=False))
        elif quiet:
            for event in events:
                if isinstance(event, StackResult):
                    click.echo(event.answer)
        else:
            from .view import render_events

            render_events(events, show_prompts=show_prompts)


@main.command()
@click.argument("stack_file", metavar="STACK")
@click.option("--set", "sets", multiple=True, metavar="STAGE.KEY=VALUE", help="Override a stack setting.")
@click.option("--gpu-layers", type=int, default=None, metavar="N", help="Offload N layers to the GPU (-1: all).")
def repl(stack_file: str, sets: tuple[str, ...], gpu_layers: int | None) -> None:
    """Chat with STACK interactively (/help for commands)."""
    from .repl import Repl

    Repl(stack_file, with_gpu_layers(parse_overrides(sets), gpu_layers)).loop()


@main.command()
@click.argument("stack_file", metavar="STACK")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def info(stack_file: str, as_json: bool) -> None:
    """Show STACK's (a stack file or a model reference) resolved models, adapters and a memory estimate."""
    from .engine import backend_info
    from .report import stack_report

    report = stack_report(stack_file)
    backend = backend_info()
    report["backend"] = {"name": backend.name, "gpu_offload": backend.gpu_offload, "devices": list(backend.devices)}
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        from .view import render_report

        render_report(report)


# -- serve: the HTTP server (fslm_edge/server, the `server` extra), imported only when it runs ---
@main.command()
@click.argument("stacks", nargs=-1, required=True, metavar="STACK [STACK ...]")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free one).")
@click.option("--api-key", envvar="FSLM_EDGE_API_KEY", default=None, help="Require 'Authorization: Bearer KEY'.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Stack instances per model id (several: one llama.cpp thread each).")
@click.option("--parallel", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Requests per model id answered at once, their tokens decoded together in one batch.")
@click.option("--merge-adapters", is_flag=True,
              help="Serve every stage from a file of its own, its adapter merged in (made once, cached): "
              "no adapter work per token, and with --parallel, stages batch on decoders of their own.")
@click.option("--merge-type", default=None, metavar="TYPE",
              help="Weights of the --merge-adapters files: q8_0 (the default; close to the adapters' own "
              "answers), q4_0 (faster, answers differ more) or bf16 (batches best with --parallel where the CPU "
              "has fast BF16 matmuls); docs/server.md, \"Merged files\".")
@click.option("--queue", "max_waiting", default=16, show_default=True, type=click.IntRange(0, 100000),
              help="Requests that may wait per model id; more get 503.")
@click.option("--timeout", "timeout_s", default=300.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Seconds per request, waiting included.")
@click.option("--max-body", "max_body_bytes", default=1 << 20, show_default=True, type=click.IntRange(1),
              help="Largest request body in bytes (more: 413).")
@click.option("--set", "sets", multiple=True, metavar="STAGE.KEY=VALUE", help="Override a setting of every STACK.")
def serve(stacks: tuple[str, ...], sets: tuple[str, ...], **options) -> None:
    """Serve STACKs (stack files or model references) over an OpenAI-compatible HTTP API (docs/server.md)."""
    try:
        from .server.main import serve as run_server
    except ImportError as exc:
        if (exc.name or "").partition(".")[0] not in ("starlette", "uvicorn", "anyio"):
            raise
        raise InputError(f"serve needs the server extra ({exc.name} is missing): pip install -e '.[server]'") from None
    run_server(stacks, overrides=parse_overrides(sets), debug=bool(os.environ.get("FSLM_EDGE_VERBOSE")), **options)
