"""``p2pdma explain A B``: why a pair gets its verdict: the path, ACS per port, the reason, the fix.
``--json`` prints ``p2pdma.explain/1``."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from p2pdma.cli import COMMAND_HELP
from p2pdma.cli.common import (
    add_source_args,
    cpus_text,
    load_topology,
    name_of,
    numa_text,
    resolve,
    terminal,
    warn,
    with_kernel_source,
)

if TYPE_CHECKING:
    from p2pdma.pci.topology import Device

NAME_HELP = "alias (GPU0), dN from the matrix, BDF (3:0.0, 0000:03:00.0) or OS name (mlx5_0, nvme0n1)"


def add_parser(sub: Any) -> None:
    """Register ``explain``."""
    e = sub.add_parser("explain", help=COMMAND_HELP["explain"])
    e.add_argument("provider", help="the device whose memory is reached: " + NAME_HELP)
    e.add_argument("client", help="the device that issues the DMA: " + NAME_HELP)
    add_source_args(e)
    e.set_defaults(handler=run)


def _where(d: Device) -> str:
    return f"NUMA {numa_text(d)}, CPUs {cpus_text(d)}"


def numa_line(p: Device, c: Device) -> str:
    """Where the two sit: NUMA node and local CPUs of each, and whether they share a node."""
    line = f"numa: provider {_where(p)}; client {_where(c)}"
    if numa_text(p) != "-" and numa_text(c) != "-":
        line += "  (same node)" if p.numa_node == c.numa_node else "  (different nodes)"
    return line


def run(args: argparse.Namespace) -> int:
    """Print the verdict of one ordered pair."""
    from p2pdma.p2p.decide import calc_map_type_and_dist

    topo = load_topology(args)
    warn(topo)
    p = resolve(topo, args.provider)
    c = resolve(topo, args.client)
    from p2pdma.p2p.notes import nvlink, pair_notes

    v = calc_map_type_and_dist(topo, p, c, args.kernel)
    notes = pair_notes(topo, p, c)
    if args.json:
        from p2pdma.report.documents import explain_document

        print(json.dumps(with_kernel_source(explain_document(topo, args.kernel, v, notes, nvlink(topo, p, c)), args),
                         indent=1))
    else:
        from p2pdma.report import text

        term = terminal()
        lines = [f"{name_of(topo, p.bdf)}  ->  {name_of(topo, c.bdf)}", numa_line(p, c),
                 text.render_explain(topo, v), *(f"note: {n}" for n in notes)]
        out = term.wrap("\n".join(lines))
        mt = v.map_type.name
        print(out.replace(f"map type: {mt}", f"map type: {term.paint(mt, text.CELL[v.map_type])}", 1))
    return 0
