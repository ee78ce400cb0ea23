"""The ``p2pdma report OUT.html`` command: the self-contained HTML report of a machine."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from p2pdma.cli import COMMAND_HELP
from p2pdma.cli.common import add_source_args, add_view_args, load_topology, select, warn, with_kernel_source

REPORT_SCHEMA = "p2pdma.report/1"


def add_parser(subparsers: Any) -> None:
    """Register ``report``."""
    p = subparsers.add_parser(
        "report", help=COMMAND_HELP["report"]
    )
    p.add_argument("out", metavar="OUT.html", help="where to write the report ('-' for stdout)")
    p.add_argument("--force", action="store_true", help="replace OUT.html when it exists")
    add_source_args(p)
    add_view_args(p)
    p.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """Write the report of the devices in view (by default the devices people peer; the tree shows every
    function); print where it went (``--json``: a ``p2pdma.report/1`` summary)."""
    from p2pdma.p2p.matrix import compute_matrix
    from p2pdma.report.documents import pair_counts, selection_json, stamp
    from p2pdma.report.html import render_html

    topo = load_topology(args)
    warn(topo)
    sel = select(args, topo)
    mat = compute_matrix(topo, args.kernel, select=sel.bdfs)
    page = render_html(topo, args.kernel, mat, sel)
    data = page.encode("utf-8")
    if args.out == "-":
        sys.stdout.write(page)
        sys.stdout.flush()
        return 0
    from p2pdma.output import write_output

    out = Path(args.out)
    write_output(out, data, force=args.force)
    if args.json:
        doc = {
            "schema": REPORT_SCHEMA,
            "out": str(out),
            "bytes": len(data),
            "machine": topo.name,
            "kernel": args.kernel,
            "functions": len(topo.devices),
            "endpoints": len(mat.bdfs),
            "pairs": mat.counts(),
            "counts": pair_counts(mat),
            "selection": selection_json(topo, sel),
        }
        print(json.dumps(with_kernel_source(stamp(doc, topo, args.kernel), args), indent=1))
    else:
        print(f"wrote {out} ({len(data)} bytes): {len(topo.devices)} functions, {len(mat.bdfs)} in the matrix")
        summary = sel.summary(topo)
        if summary:
            print(summary)
    return 0


__all__ = ["REPORT_SCHEMA", "add_parser", "cmd_report"]
