"""The ``p2pdma`` command line: the parser and ``main()``; one module per command in this package.

Exit codes: 0 success, 1 a found violation (simulate, check), 2 bad input. Each command module
imports its library code inside its handler, so ``p2pdma --help`` loads no model, numpy or fleet.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from p2pdma import __version__
from p2pdma.cli import capture, check, completion, examples, explain, fix, fleet, matrix, report, simulate, topo
from p2pdma.errors import P2pdmaError

# The commands, in the order --help lists them.
COMMAND_MODULES = (topo, matrix, explain, examples, report, capture, fleet, simulate, check, fix, completion)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        self.exit(2, f"p2pdma: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the README and tests)."""
    p = _Parser(prog="p2pdma", description="Which PCI functions can do peer-to-peer DMA, as the kernel decides.")
    p.add_argument("--version", action="version", version=f"p2pdma {__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)
    for mod in COMMAND_MODULES:
        mod.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: any P2pdmaError becomes one line on stderr and exit 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:  # no command: the usage and the commands
        sys.stdout.write(parser.format_help())
        return 0
    try:
        code: int = args.handler(args)
        return code
    except P2pdmaError as exc:
        print(f"p2pdma: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


def matrix_document(topo: Any, profile: str, include_bridges: bool = False) -> dict[str, Any]:
    """The ``p2pdma.matrix/1`` document (kept here for callers of the old ``p2pdma.cli``)."""
    return matrix.matrix_document(topo, profile, include_bridges)


__all__ = ["build_parser", "main", "matrix_document"]
