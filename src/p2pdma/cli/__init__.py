"""The ``p2pdma`` command line: the parser and ``main()``; one module per command in this package.

Exit codes: 0 success, 1 a found violation (simulate, check), 2 bad input. Each command module
imports its library code inside its handler, so ``p2pdma --help`` loads no model, numpy or fleet.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from p2pdma import __version__
from p2pdma.errors import P2pdmaError

ALSO_IN = {"man": "completion"}  # commands registered by another command's module

# Each command's one-line help, in the order --help lists them: the command modules register with these,
# and `p2pdma --help` (or a mistyped command) lists them without importing any command module.
COMMAND_HELP = {
    "topo": "the PCI tree: port types, links, ACS, host bridge whitelist",
    "matrix": "P2P map type and distance for every pair of the devices people peer",
    "explain": "why a pair gets its verdict: path, ACS per port, fix",
    "examples": "list the bundled example machines",
    "report": "one self-contained HTML file: PCI tree, P2P heat map, each pair's reason and fix",
    "capture": "save what the verdict reads (sysfs, procfs) as one archive",
    "fleet": "analyse many captures: per machine, topology groups, outliers, causes",
    "simulate": "run a scenario (exports, imports, DMA, resets) on the run-time model",
    "check": "explore every interleaving of a model; prove the lifetime rules or print the shortest trace that "
             "breaks one",
    "fix": "the smallest ACS change making pairs BUS_ADDR, how to apply it, its IOMMU-group cost",
    "completion": "print a shell completion script (bash or zsh) generated from the parser",
    "man": "print the p2pdma(1) man page (roff) generated from the parser",
}
# The command modules (in this package), in the order --help lists them.
COMMANDS = tuple(name for name in COMMAND_HELP if name not in ALSO_IN)


def command_module(name: str) -> ModuleType:
    """The module of command ``name``, imported on first use (a run loads only its own command); static
    imports, one per command, so that the layering and type checks see every one."""
    match ALSO_IN.get(name, name):
        case "topo":
            from p2pdma.cli import topo

            return topo
        case "matrix":
            from p2pdma.cli import matrix

            return matrix
        case "explain":
            from p2pdma.cli import explain

            return explain
        case "examples":
            from p2pdma.cli import examples

            return examples
        case "report":
            from p2pdma.cli import report

            return report
        case "capture":
            from p2pdma.cli import capture

            return capture
        case "fleet":
            from p2pdma.cli import fleet

            return fleet
        case "simulate":
            from p2pdma.cli import simulate

            return simulate
        case "check":
            from p2pdma.cli import check

            return check
        case "fix":
            from p2pdma.cli import fix

            return fix
        case "completion":
            from p2pdma.cli import completion

            return completion
    raise KeyError(name)


def _columns() -> int:
    """The terminal's width as shutil.get_terminal_size() gives it (COLUMNS, else stdout's TTY, else 80),
    without importing shutil (and the compression modules it loads) on every run."""
    import os

    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


class _Formatter(argparse.HelpFormatter):
    """argparse's help layout with the width it would choose (shutil's, less 2), found without shutil."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position, _columns() - 2 if width is None else width)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> Any:
        self.exit(2, f"p2pdma: {message}\n")


def build_parser(only: str | None = None, *, listing: bool = False) -> argparse.ArgumentParser:
    """The argument parser (also used by the README and tests); ``only``: register that command alone,
    which parses its own arguments exactly as the full parser does, without importing the others;
    ``listing``: the commands by name and help only (the same --help, the same errors), no module imported."""
    p = _Parser(prog="p2pdma", description="Which PCI functions can do peer-to-peer DMA, as the kernel decides.")
    p.add_argument("--version", action="version", version=f"p2pdma {__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)
    if listing:
        for name, text in COMMAND_HELP.items():
            sub.add_parser(name, help=text, add_help=False).add_argument("rest", nargs=argparse.REMAINDER)
        return p
    for name in COMMANDS if only is None else (only,):
        command_module(name).add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: any P2pdmaError becomes one line on stderr and exit 2."""
    words = list(sys.argv[1:] if argv is None else argv)
    # `p2pdma COMMAND ...`: that command's parser alone; anything else (no command, --help, a typo) the listing,
    # and the full parser only when the listing finds a command after all (`p2pdma -- matrix`)
    if words and words[0] in COMMAND_HELP:
        parser = build_parser(words[0])
    else:
        parser = build_parser(listing=True)
        if getattr(parser.parse_args(words), "cmd", None) is not None:
            parser = build_parser()
    args = parser.parse_args(words)
    if getattr(args, "handler", None) is None:  # no command: the usage and the commands
        sys.stdout.write(parser.format_help())
        return 0
    from p2pdma.cli.common import flush_deferred

    flush_deferred(show=False)  # nothing queued by an earlier in-process use is this run's
    try:
        code: int = args.handler(args)
        sys.stdout.flush()  # a full disk or a closed pipe shows here, not in the interpreter's exit
    except P2pdmaError as exc:
        flush_deferred(show=False)
        print(f"p2pdma: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        _stdout_gone()
        flush_deferred(show=False)
        return 0
    except OSError as exc:  # stdout on a full disk (ENOSPC), a dead terminal (EIO): one line
        _stdout_gone()
        flush_deferred(show=False)
        print(f"p2pdma: cannot write the output: {exc.strerror or exc}", file=sys.stderr)
        return 2
    flush_deferred()
    return code


def _stdout_gone() -> None:
    """Point stdout at /dev/null so that the interpreter's own flush at exit does not fail again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # pragma: no cover - stdout without a file descriptor
        pass


def matrix_document(topo: Any, profile: str, include_bridges: bool = False) -> dict[str, Any]:
    """The ``p2pdma.matrix/1`` document (kept here for callers of the old ``p2pdma.cli``)."""
    doc: dict[str, Any] = command_module("matrix").matrix_document(topo, profile, include_bridges)
    return doc


__all__ = ["build_parser", "main", "matrix_document"]
