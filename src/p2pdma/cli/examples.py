"""``p2pdma examples``: the bundled example machines."""

from __future__ import annotations

import argparse
import json
from typing import Any

from p2pdma.cli import COMMAND_HELP

EXAMPLES_SCHEMA = "p2pdma.examples/1"


def add_parser(sub: Any) -> None:
    """Register ``examples``."""
    x = sub.add_parser("examples", help=COMMAND_HELP["examples"])
    x.add_argument("--json", action="store_true", help="print one JSON document")
    x.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """List the examples with their size and description."""
    from p2pdma import examples

    items = []
    for name in examples.names():
        spec = examples.load_spec(name)
        topo = spec.topology()
        items.append(
            {
                "name": name,
                "description": spec.description,
                "functions": len(topo.devices),
                "endpoints": len(topo.endpoints),
                "default": name == examples.DEFAULT_EXAMPLE,
            }
        )
    if args.json:
        from p2pdma import __version__

        print(json.dumps({"schema": EXAMPLES_SCHEMA, "tool_version": __version__, "examples": items}, indent=1))
    else:
        for it in items:
            star = " (default)" if it["default"] else ""
            print(f"{it['name']:<22} {it['endpoints']:>3} endpoints  {it['description']}{star}")
    return 0
