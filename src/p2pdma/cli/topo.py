"""``p2pdma topo``: the PCI tree with port types, links, ACS and the host bridge whitelist."""

from __future__ import annotations

import argparse
import json
from typing import Any

from p2pdma.cli.common import add_source_args, device_json, load_topology, warn

TOPO_SCHEMA = "p2pdma.topo/1"


def add_parser(sub: Any) -> None:
    """Register ``topo``."""
    t = sub.add_parser("topo", help="the PCI tree: port types, links, ACS, host bridge whitelist")
    add_source_args(t)
    t.add_argument("--dot", action="store_true", help="print Graphviz DOT (render with e.g. dot -Tsvg)")
    t.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the tree (text, ``--dot`` or ``p2pdma.topo/1``)."""
    topo = load_topology(args)
    warn(topo)
    if args.dot:
        from p2pdma.report.dot import render_dot

        print(render_dot(topo), end="")
        return 0
    if args.json:
        doc = {
            "schema": TOPO_SCHEMA,
            "machine": topo.name,
            "host_bridges": [
                {"name": h.name, "host_dev": h.host_dev, "root_devices": list(h.root_devices)}
                for h in topo.host_bridges
            ],
            "devices": [device_json(d) for d in topo.devices],
            "warnings": list(topo.warnings),
        }
        print(json.dumps(doc, indent=1))
    else:
        from p2pdma.report import text

        print(text.render_topo(topo))
    return 0
