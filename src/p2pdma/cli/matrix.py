"""``p2pdma matrix``: the map type and distance of every pair of the devices people peer (or of the
functions the view options pick), as a table, CSV, ``p2pdma.matrix/2`` or the older ``p2pdma.matrix/1``."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, TextIO

from p2pdma.cli import COMMAND_HELP
from p2pdma.cli.common import (
    Term,
    add_source_args,
    add_view_args,
    check_size,
    counts_line,
    device_json,
    device_table,
    load_topology,
    matrix_progress,
    select,
    terminal,
    warn,
    with_kernel_source,
)
from p2pdma.errors import InputError

if TYPE_CHECKING:
    from p2pdma.p2p.matrix import Matrix
    from p2pdma.p2p.small import PairTable, SmallMatrix
    from p2pdma.pci.names import Selection
    from p2pdma.pci.topology import Topology

MATRIX_SCHEMA = "p2pdma.matrix/1"
MAX_TABLE_COLUMNS = 64  # past this many functions the text lists them and points to --json / --csv
LABELS_NOTE = "labels: GPU0, NIC0, NVME0, ACCEL0 by class and BDF order, dN the others (explain takes them)"


def add_parser(sub: Any) -> None:
    """Register ``matrix``."""
    m = sub.add_parser("matrix", help=COMMAND_HELP["matrix"])
    add_source_args(m)
    m.add_argument("--all", action="store_true", help="every function, bridges too (implies --all-functions)")
    add_view_args(m)
    m.add_argument("--schema", choices=("1", "2"), default="2",
                   help="the --json document: 2 (p2pdma.matrix/2, default) or 1 (p2pdma.matrix/1, every function)")
    m.add_argument("--csv", action="store_true", help="print the pair table as CSV (one row per ordered pair)")
    m.set_defaults(handler=run)


def matrix_document(topo: Topology, profile: str, include_bridges: bool = False) -> dict[str, Any]:
    """The ``p2pdma.matrix/1`` document for a machine."""
    from p2pdma.p2p.matrix import compute_matrix

    mat = compute_matrix(topo, profile, include_bridges=include_bridges, progress=matrix_progress())
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
    import json

    from p2pdma.p2p.matrix import compute_matrix

    mat = compute_matrix(topo, profile, include_bridges=include_bridges, progress=matrix_progress())
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


def cell_text(mat: PairTable, i: int, j: int) -> str:
    """The compact cell (report.text.cell(): ``X``, ``B4``, ``H8?``, ``--``)."""
    from p2pdma.report.text import cell

    mt, dist, sure = mat.cell(i, j)
    return cell(mt, dist, sure, i == j)


def _paint_cell(term: Term, text: str) -> str:
    if not term.colour:
        return text
    base = text.rstrip("?")
    out = term.paint(base, base[:1])
    return out + (term.paint("?", "?") if text.endswith("?") else "")


def render_table(mat: PairTable, label: dict[str, str], term: Term) -> list[str]:
    """The pair table, split into blocks of columns that fit ``term.table_width``."""
    n = len(mat.bdfs)
    labs = [label.get(b, b) for b in mat.bdfs]
    cells = [[cell_text(mat, i, j) for j in range(n)] for i in range(n)]
    w = max(3, *(len(x) + 1 for x in labs), *(len(c) + 1 for row in cells for c in row))
    first = max(len(x) for x in labs) + 2
    per_block = max(1, (term.table_width - first) // w)
    lines: list[str] = []
    for c0 in range(0, n, per_block):
        cols = range(c0, min(n, c0 + per_block))
        if c0:
            lines.append("")
        lines.append(" " * first + "".join(term.paint(labs[j].rjust(w), "bold") for j in cols))
        for i in range(n):
            row = "".join(" " * (w - len(cells[i][j])) + _paint_cell(term, cells[i][j]) for j in cols)
            lines.append(term.paint(labs[i].ljust(first), "bold") + row)
    return lines


def render_matrix(
    mat: Matrix | SmallMatrix, sel: Selection, term: Term, total: int, kernel_source: str | None = None
) -> str:
    """The text view: the header (which kernel profile and why, what was left out), the devices with
    names, NUMA and CPUs, the table, the legend and the distinct-pair counts."""
    from p2pdma.pci.names import labels
    from p2pdma.report.text import LEGEND

    topo = mat.topo
    n = len(mat.bdfs)
    label = labels(topo)
    shown = f"{n} of {total}" if n != total else f"{n}"
    lines = [term.paint(x, "bold") for x in
             term.wrap(f"machine: {topo.name}   kernel rules: {mat.profile}   functions: {shown}").split("\n")]
    if kernel_source:
        lines.extend(term.wrap(f"kernel {mat.profile}: {kernel_source}").split("\n"))
    summary = sel.summary(topo)
    if summary:
        lines.append(summary)
    lines.extend(device_table(topo, mat.bdfs, label, term.width or term.table_width))  # piped too: a table
    if n > MAX_TABLE_COLUMNS:
        lines.append(f"{n} functions: too many columns for a table; use --json or --csv for every pair.")
    elif n > 1:
        lines.append("")
        lines.extend(render_table(mat, label, term))
        lines.append("")
        lines.append(LEGEND)
        lines.append("  " + LABELS_NOTE)
    lines.append(counts_line(mat.pair_counts(), mat.uncertain_why()))
    return term.wrap("\n".join(lines))


def run(args: argparse.Namespace) -> int:
    """Print the table, the CSV or the JSON document."""
    if args.json and args.csv:
        raise InputError("give --json or --csv, not both")
    view = args.classes is not None or args.devices is not None
    if args.json and args.schema == "1" and view:
        raise InputError("p2pdma.matrix/1 lists every function; --class and --devices need --schema 2")
    topo = load_topology(args)
    warn(topo)
    if args.json and args.schema == "1":
        check_size(args, len(topo.devices) if args.all else len(topo.endpoints))
        write_matrix_json(topo, args.kernel, args.all, sys.stdout)
        return 0
    sel = select(args, topo, include_bridges=args.all)
    if not (args.json or args.csv) and len(sel.bdfs) <= MAX_TABLE_COLUMNS:
        from p2pdma.p2p.small import compute_small  # a table a terminal shows: no numpy to load

        total = len(topo.devices) if args.all else len(topo.endpoints)
        small = compute_small(topo, args.kernel, select=sel.bdfs)
        print(render_matrix(small, sel, terminal(), total, getattr(args, "kernel_source", None)))
        return 0
    from p2pdma.p2p.matrix import compute_matrix

    mat = compute_matrix(topo, args.kernel, select=sel.bdfs, progress=matrix_progress())
    if args.json:
        from p2pdma.report.documents import write_matrix_document_v2

        write_matrix_document_v2(mat, sys.stdout, sel, extra=lambda doc: with_kernel_source(doc, args))
    elif args.csv:
        from p2pdma.report.documents import pairs_csv

        sys.stdout.write(pairs_csv(mat))
    else:
        total = len(topo.devices) if args.all else len(topo.endpoints)
        print(render_matrix(mat, sel, terminal(), total, getattr(args, "kernel_source", None)))
    return 0
