"""``p2pdma topo``: the PCI tree with port types, links, ACS and the host bridge whitelist; the devices
people peer carry their alias (``GPU0``), OS names and NUMA node."""

from __future__ import annotations

import argparse
import json
import re
from typing import TYPE_CHECKING, Any

from p2pdma.cli import COMMAND_HELP
from p2pdma.cli.common import add_source_args, load_topology, numa_text, terminal, warn, with_kernel_source

if TYPE_CHECKING:
    from p2pdma.pci.topology import Topology

TOPO_SCHEMA = "p2pdma.topo/1"
# a tree line: the branch drawing, then the function's BDF (report.text.render_topo())
_TREE_LINE = re.compile(r"^(?P<pre>[│├└─ ]*)(?P<bdf>[0-9a-fA-F]{4,}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7])(?=  )")


def add_parser(sub: Any) -> None:
    """Register ``topo``."""
    t = sub.add_parser("topo", help=COMMAND_HELP["topo"])
    add_source_args(t)
    t.add_argument("--dot", action="store_true", help="print Graphviz DOT (render with e.g. dot -Tsvg)")
    t.set_defaults(handler=run)


def annotate(topo: Topology, text: str) -> str:
    """The tree with each aliased function's alias, OS names and NUMA node after its BDF."""
    from p2pdma.pci.names import aliases

    alias_map = aliases(topo)
    out = []
    for line in text.split("\n"):
        m = _TREE_LINE.match(line)
        if m and m["bdf"] in alias_map:
            d = topo[m["bdf"]]
            extra = [alias_map[d.bdf], *d.os_names]
            if numa_text(d) != "-":
                extra.append(f"NUMA {numa_text(d)}")
            line = line[: m.end()] + "  " + " ".join(extra) + line[m.end():]
        out.append(line)
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    """Print the tree (text, ``--dot`` or ``p2pdma.topo/1``)."""
    topo = load_topology(args)
    warn(topo)
    if args.dot:
        from p2pdma.report.dot import render_dot

        print(render_dot(topo), end="")
        return 0
    if args.json:
        from p2pdma.pci.names import aliases
        from p2pdma.report.documents import device_doc, head

        alias_map = aliases(topo)
        doc = head(TOPO_SCHEMA, topo, args.kernel)
        doc.update({
            "host_bridges": [
                {"name": h.name, "host_dev": h.host_dev, "root_devices": list(h.root_devices)}
                for h in topo.host_bridges
            ],
            "devices": [device_doc(d, alias_map) for d in topo.devices],
            "warnings": list(topo.warnings),
        })
        print(json.dumps(with_kernel_source(doc, args), indent=1))
    else:
        from p2pdma.report import text

        print(terminal().wrap(annotate(topo, text.render_topo(topo))))
    return 0
