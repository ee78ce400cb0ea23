"""For every real machine's file in ../shared/data/real and the hwloc XML of ../shared/data/hwloc: functions
read, ordered endpoint pairs by map type, how many the tool marks uncertain, how many depend on a fact the
file lacks, and which facts it lacks. Prints a Markdown table (the closing note of issue 15 quotes it).

Usage: python benchmarks/real_files_table.py [DATA_DIR]   (default: ../shared/data next to the repository)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from p2pdma.errors import P2pdmaError
from p2pdma.p2p.decide import MapType, calc_map_type_and_dist
from p2pdma.p2p.matrix import compute_matrix
from p2pdma.pci.topology import Topology
from p2pdma.report.documents import pair_counts, uncertain_why
from p2pdma.sources import open_machine

KINDS = {"lspci": "lspci", "nccl": "nccl_xml", "hwloc": "hwloc"}


def files(data: Path) -> list[tuple[str, Path]]:
    out = [(KINDS[sub], p) for sub in KINDS for p in sorted((data / "real" / sub).glob("*")) if p.is_file()]
    out += [("hwloc", p) for p in sorted((data / "hwloc").glob("*.xml"))]
    return out + [("root", p) for p in sorted((data / "hwloc").glob("*.tar.*"))]  # hwloc-gathered sysfs trees


def lacking(topo: Topology) -> list[str]:
    """The facts the decision reads that this input does not hold."""
    out = []
    n = len(topo.devices)
    acs = sum(not d.acs_known for d in topo.devices)
    if acs:
        out.append(f"ACS ({acs}/{n} functions)")
    hbs = [h.name for h in topo.host_bridges if not h.host_bridge_dev_known]
    if hbs:
        out.append(f"host bridge device ({len(hbs)}/{len(topo.host_bridges)})")
    if topo.cpu is None:
        out.append("CPU")
    elif topo.cpu.family == 0:
        out.append("CPU family/model")
    eps = topo.endpoints
    if eps and all(d.max_speed is None for d in eps):
        out.append("link speed")
    return out


def fact_uncertain(topo: Topology, p: str, c: str) -> bool:
    """Whether the verdict for (p, c) used a fact the file lacks: a path port's ACS where a common
    bridge exists, or a host bridge device where the host bridge decides (not the AMD Zen CPU rule)."""
    v = calc_map_type_and_dist(topo, p, c)
    if v.unknown_ports:
        return True
    if v.map_type == MapType.BUS_ADDR or v.via == "cpu":
        return False
    names = {topo[p].host_bridge, topo[c].host_bridge}
    return any(not topo.host_bridge(h).host_bridge_dev_known for h in names)


def row(kind: str, path: Path) -> str:
    t0 = time.perf_counter()
    try:
        topo = open_machine(kind, path)
    except P2pdmaError as exc:
        return f"| {path.name} | {kind} | error: {exc} | | | | | | | |"
    m = compute_matrix(topo)
    counts = pair_counts(m)  # distinct ordered pairs, as matrix, fix, report and fleet count them
    why = uncertain_why(m)
    eps = [d.bdf for d in topo.endpoints]
    by_facts = sum(fact_uncertain(topo, p, c) for p in eps for c in eps if p != c)
    uncertain = f"{counts['uncertain']} (ACS {why['acs']}, host bridge {why['host_bridge']})"
    nv = len(topo.nvlinks) // 2
    named = sum(bool(d.os_names) for d in topo.devices)
    ms = (time.perf_counter() - t0) * 1000
    return (f"| {path.name} | {kind} | {len(topo.devices)} | {counts['BUS_ADDR']} | {counts['THRU_HOST_BRIDGE']}"
            f" | {counts['NOT_SUPPORTED']} | {uncertain} | {by_facts} | {nv} | {named} |"
            f" {', '.join(lacking(topo)) or '-'} | {ms:.0f} |")


def main(argv: list[str]) -> int:
    data = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (data / "real").is_dir():
        print(f"no reference data at {data}", file=sys.stderr)
        return 2
    print("| file | reader | functions | BUS_ADDR | THRU_HOST_BRIDGE | NOT_SUPPORTED |"
          " uncertain (tool, by missing fact) | need a missing fact | NVLink pairs | functions with OS names |"
          " input lacks | ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for kind, path in files(data):
        print(row(kind, path))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
