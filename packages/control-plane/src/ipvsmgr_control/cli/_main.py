"""Entry point: parse, run one command, turn every failure into a message and an exit code."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ._client import ApiError, Client, Unreachable, normalize_endpoints
from ._context import Context, UsageError
from ._parser import build_parser
from ._specs import FileError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run `ipvsmgr` with `argv` (default sys.argv[1:]); returns the exit code instead of exiting."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits for --help (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    ctx = Context(Client(normalize_endpoints(args.endpoints), args.timeout, stale=args.stale), args.output)
    try:
        return run(ctx, args)
    except BrokenPipeError:  # `ipvsmgr ... | head`: stop quietly, and keep Python from complaining at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


def run(ctx: Context, args: argparse.Namespace) -> int:
    """Dispatch to the command and map the failures it may raise."""
    try:
        return int(args.func(ctx, args))
    except UsageError as err:
        ctx.note(f"{args.prog}: error: {err}\n(see `{args.prog} --help`)")
        return EXIT_USAGE
    except ApiError as err:
        report_problem(ctx, err)
        return EXIT_FAILED
    except FileError as err:
        ctx.note(f"error: {err}")
        return EXIT_FAILED
    except Unreachable as err:
        ctx.note(f"error: {err}")
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def report_problem(ctx: Context, err: ApiError) -> None:
    """The problem's sentence, then one `field: message` line per field error."""
    extra = f", retry after {err.retry_after}s" if err.retry_after else ""
    lines = [f"error: {err.detail} (HTTP {err.status}{extra})"]
    lines += [f"  {field}: {message}" if field else f"  {message}" for field, message in err.field_errors]
    ctx.note("\n".join(lines))
