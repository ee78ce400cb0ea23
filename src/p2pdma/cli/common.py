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
    from p2pdma.p2p.kernels import AUTO, KERNEL_CHOICES

    g = p.add_argument_group("machine (default: this machine's live /sys)")
    src = g.add_mutually_exclusive_group()
    for option, metavar, helptext in SOURCE_OPTIONS:
        src.add_argument(option, metavar=metavar, help=helptext)
    p.add_argument(
        "--kernel",
        type=_kernel_arg,
        choices=_KernelChoices(KERNEL_CHOICES),
        default=AUTO,
        metavar="{" + ",".join(KERNEL_CHOICES) + ",X.Y}",
        help="kernel rules: auto (the machine's kernel release; default), a profile, or a release X.Y[.Z]"
        " (classic/latest: aliases of the newest mainline profile)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")


class _KernelChoices(tuple[str, ...]):
    """The named ``--kernel`` choices, also containing any release X.Y[.Z] (checked by _kernel_arg)."""

    def __contains__(self, value: object) -> bool:
        import re

        return tuple.__contains__(self, value) or (
            isinstance(value, str) and re.fullmatch(r"\d+\.\d+(\.\d+)?", value) is not None
        )


def _kernel_arg(value: str) -> str:
    """``--kernel`` syntax check through the resolver (one-line argparse error when it refuses)."""
    from p2pdma.p2p.kernels import AUTO, resolve_kernel

    if value != AUTO:
        try:
            resolve_kernel(value, None)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return value


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
    topo = open_machine(kind, value)
    resolve_kernel_arg(args, topo, live=kind is None)
    return topo


def resolve_kernel_arg(args: argparse.Namespace, topo: Topology | None, live: bool = False) -> None:
    """Resolve ``args.kernel`` in place to a profile name (auto: the live ``uname -r`` or the input's
    captured osrelease), set ``args.kernel_source``/``args.kernel_notes``, print the notes on stderr.
    None (simulate: the scenario's kernel) is left for the command."""
    import os

    from p2pdma.p2p.kernels import resolve_kernel

    name = getattr(args, "kernel", None)
    if name is None:
        return
    release = os.uname().release if live else getattr(topo, "kernel_release", None)
    profile, source, notes = resolve_kernel(name, release)
    if name == "auto" and not release:
        # the default on an input without a release: said in kernel_source, not on every run's stderr
        source, notes = "no kernel release in this input: newest mainline profile", []
    if live and name == "auto":
        source = f"uname -r {release}"
    args.kernel, args.kernel_source, args.kernel_notes = profile, source, notes
    for n in notes:
        print(f"p2pdma: note: {n}", file=sys.stderr)


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
