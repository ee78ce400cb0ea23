"""``p2pdma explain A B``: why a pair gets its verdict: the path, ACS per port, the reason, the fix."""

from __future__ import annotations

import argparse
import json
from typing import Any

from p2pdma.cli.common import add_source_args, load_topology, resolve, warn


def add_parser(sub: Any) -> None:
    """Register ``explain``."""
    e = sub.add_parser("explain", help="why a pair gets its verdict: path, ACS per port, fix")
    e.add_argument("provider", help="BDF of the device whose memory is reached (e.g. 0000:01:00.0)")
    e.add_argument("client", help="BDF of the device that issues the DMA")
    add_source_args(e)
    e.set_defaults(handler=run)


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
        doc = v.to_json(with_path=True)
        doc["nvlink"] = nvlink(topo, p, c)
        doc["notes"] = notes
        print(json.dumps(doc, indent=1))
    else:
        from p2pdma.report import text

        print(text.render_explain(topo, v))
        for n in notes:
            print(f"note: {n}")
    return 0
