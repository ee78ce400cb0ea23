"""Options and helpers every command shares: the machine options, loading, warnings, device JSON."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from p2pdma.errors import InputError

if TYPE_CHECKING:
    from p2pdma.pci.topology import Device, Topology

MAX_WARNINGS = 8

# The machine options: (option, metavar, help). All are mutually exclusive; none given = live /sys.
SOURCE_OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("--root", "DIR", "read a captured sysfs/procfs root instead of /"),
    ("--example", "NAME", "a bundled example machine (see `p2pdma examples`)"),
    ("--spec", "FILE", "a machine described in YAML/JSON (spec format)"),
    ("--hwloc", "FILE.xml", "an hwloc XML export (lstopo --of xml): PCI tree, ACS unknown"),
    ("--lspci", "FILE", "an lspci -xxxx dump (what lspci -F reads): tree from bus numbers, ACS from config"),
    ("--nccl-xml", "FILE.xml", "an NCCL topology XML (NCCL_TOPO_DUMP_FILE): PCI tree, ACS unknown"),
)


def _dest(option: str) -> str:
    return option.lstrip("-").replace("-", "_")


def add_source_args(p: argparse.ArgumentParser) -> None:
    """The machine options, ``--kernel`` and ``--json``."""
    from p2pdma.p2p.decide import DEFAULT_PROFILE, KERNEL_PROFILES

    g = p.add_argument_group("machine (default: this machine's live /sys)")
    src = g.add_mutually_exclusive_group()
    for option, metavar, helptext in SOURCE_OPTIONS:
        src.add_argument(option, metavar=metavar, help=helptext)
    p.add_argument(
        "--kernel",
        choices=KERNEL_PROFILES,
        default=DEFAULT_PROFILE,
        help="kernel rules: latest (per-port ACS decision, HMAT) or classic (6.x)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")


def machine_source(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """The (kind, value) of the machine option given, or (None, None) for the live machine."""
    for option, _, _ in SOURCE_OPTIONS:
        value = getattr(args, _dest(option), None)
        if value is not None:
            return _dest(option), value
    return None, None


def load_topology(args: argparse.Namespace) -> Topology:
    """The machine named by the machine options (live /sys by default), through sources.open_machine()."""
    from p2pdma.sources import open_machine

    kind, value = machine_source(args)
    return open_machine(kind, value)


def warn(topo: Topology) -> None:
    """The machine's warnings on stderr, at most MAX_WARNINGS lines and a count of the rest."""
    for w in topo.warnings[:MAX_WARNINGS]:
        print(f"p2pdma: warning: {w}", file=sys.stderr)
    if len(topo.warnings) > MAX_WARNINGS:
        print(f"p2pdma: warning: ... and {len(topo.warnings) - MAX_WARNINGS} more", file=sys.stderr)


def device_json(d: Device) -> dict[str, Any]:
    """A function as the JSON documents list it (``bdf, vendor, device, class, kind`` + extras)."""
    return {
        "bdf": d.bdf,
        "vendor": f"{d.vendor:#06x}",
        "device": f"{d.device:#06x}",
        "class": f"{d.class_code:#08x}",
        "kind": d.kind,
        "port_type": d.port_type_name,
        "parent": d.parent,
        "physfn": d.physfn,
        "host_bridge": d.host_bridge,
        "name": " ".join(x for x in (d.vendor_name, d.device_name or d.class_name) if x) or None,
        "acs_ctrl": None if d.acs is None else f"{d.acs.ctrl:#06x}",
        "acs_known": d.acs_known,
        "iommu_group": d.iommu_group,
        "numa_node": d.numa_node,
    }


def resolve(topo: Topology, name: str) -> Device:
    """The device a user named; InputError naming the machine when there is none."""
    try:
        return topo.resolve(name)
    except KeyError:
        raise InputError(f"unknown device {name!r} in machine {topo.name}") from None


def matrix_progress(done: int, total: int) -> None:
    """A row counter on stderr for big matrices, drawn only on a terminal."""
    if total < 4096 or not sys.stderr.isatty():
        return
    width = 30
    filled = width * done // total
    end = "\n" if done == total else ""
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} rows", end=end, file=sys.stderr)
