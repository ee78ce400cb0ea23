"""``p2pdma matrix``: the map type and distance of every pair, as a table or ``p2pdma.matrix/1``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, TextIO

from p2pdma.cli.common import add_source_args, device_json, load_topology, matrix_progress, warn

if TYPE_CHECKING:
    from p2pdma.pci.topology import Topology

MATRIX_SCHEMA = "p2pdma.matrix/1"


def add_parser(sub: Any) -> None:
    """Register ``matrix``."""
    m = sub.add_parser("matrix", help="P2P map type and distance for every pair of functions")
    add_source_args(m)
    m.add_argument("--all", action="store_true", help="include bridges, not only type 0 functions")
    m.set_defaults(handler=run)


def matrix_document(topo: Topology, profile: str, include_bridges: bool = False) -> dict[str, Any]:
    """The ``p2pdma.matrix/1`` document for a machine."""
    from p2pdma.p2p.matrix import compute_matrix

    mat = compute_matrix(topo, profile, include_bridges=include_bridges, progress=matrix_progress)
    devs = [topo[b] for b in mat.bdfs]
    n = len(mat.bdfs)
    pairs = [mat.verdict(i, j).to_json() for i in range(n) for j in range(n)]
    return {
        "schema": MATRIX_SCHEMA,
        "kernel": profile,
        "machine": topo.name,
        "devices": [device_json(d) for d in devs],
        "pairs": pairs,
        "warnings": list(topo.warnings),
    }


def write_matrix_json(topo: Topology, profile: str, include_bridges: bool, out: TextIO) -> None:
    """Stream the ``p2pdma.matrix/1`` document pair by pair: the same bytes as ``json.dumps(matrix_document())``
    without holding every pair in memory."""
    from p2pdma.p2p.matrix import compute_matrix

    mat = compute_matrix(topo, profile, include_bridges=include_bridges, progress=matrix_progress)
    head = {"schema": MATRIX_SCHEMA, "kernel": profile, "machine": topo.name,
            "devices": [device_json(topo[b]) for b in mat.bdfs]}
    out.write(json.dumps(head)[:-1] + ', "pairs": [')
    n = len(mat.bdfs)
    first = True
    for i in range(n):
        for j in range(n):
            out.write(("" if first else ", ") + json.dumps(mat.verdict(i, j).to_json()))
            first = False
    out.write('], "warnings": ' + json.dumps(list(topo.warnings)) + "}\n")


def run(args: argparse.Namespace) -> int:
    """Print the table or the JSON document."""
    topo = load_topology(args)
    warn(topo)
    if args.json:
        write_matrix_json(topo, args.kernel, args.all, sys.stdout)
    else:
        from p2pdma.p2p.matrix import compute_matrix
        from p2pdma.report import text

        mat = compute_matrix(topo, args.kernel, include_bridges=args.all, progress=matrix_progress)
        print(text.render_matrix(mat))
    return 0
