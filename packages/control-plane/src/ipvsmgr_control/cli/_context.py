"""What every command gets: the client, the chosen output format, and helpers to show results."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from ._client import Client, Response
from ._output import dump, emit

Command = Callable[["Context", argparse.Namespace], int]


class UsageError(Exception):
    """Arguments that parse but make no sense together; exit code 2 like argparse's own errors."""


@dataclass
class Context:
    """Per-invocation state shared by the command functions."""

    client: Client
    output: str = "table"
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)

    @property
    def human(self) -> bool:
        """True when the output is for people (tables and sentences) rather than scripts."""
        return self.output == "table"

    def show(self, data: Any, render: Callable[[Any], str]) -> None:
        """`render(data)` for table output, the raw data as JSON/YAML otherwise."""
        emit(self.out, render(data) if self.human else dump(data, self.output))

    def show_items(self, body: Any, noun: str, render: Callable[[list[Any]], str]) -> None:
        """A list answer (`{"items": [...]}`): table of the items, or a note on stderr when empty."""
        items = list(body.get("items") or []) if isinstance(body, dict) else []
        if self.human and not items:
            self.note(f"No {noun}.")
            return
        self.show(body, lambda _: render(items))

    def done(self, resp: Response, message: str) -> None:
        """After a write: a sentence for people, the stored object (if any) for scripts."""
        if self.human:
            suffix = f" (revision {resp.revision})" if resp.revision is not None else ""
            emit(self.out, message + suffix)
        elif resp.body is not None:
            emit(self.out, dump(resp.body, self.output))

    def note(self, message: str) -> None:
        """A side remark for people, on stderr so stdout stays parseable."""
        self.err.write(message + "\n")
        self.err.flush()


def add_command(
    actions: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    func: Command,
    parents: Sequence[argparse.ArgumentParser],
    help_text: str,
    epilog: str | None = None,
) -> argparse.ArgumentParser:
    """A leaf subcommand that runs `func`; `parents` carry the global options so they work anywhere."""
    parser = actions.add_parser(
        name,
        help=help_text,
        description=help_text[:1].upper() + help_text[1:] + ".",
        epilog=epilog,
        parents=list(parents),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=func, prog=parser.prog)
    return parser


def add_group(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str, epilog: str
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """A command group such as `service`, whose actions are required subcommands."""
    parser = sub.add_parser(
        name,
        help=help_text,
        description=help_text[:1].upper() + help_text[1:] + ".",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser.add_subparsers(dest="action", required=True, metavar="ACTION")


def add_if_match(parser: argparse.ArgumentParser) -> None:
    """`--if-match REV`: the write only happens if the object's mod_revision is still REV."""
    parser.add_argument(
        "--if-match",
        type=int,
        metavar="REV",
        help="only change the object if its mod_revision is still REV (else HTTP 412)",
    )
