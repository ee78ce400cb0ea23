"""The ``p2pdma`` command: topo, matrix, explain, examples. Exit 0 on success, 2 on bad input."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from p2pdma import __version__, examples
from p2pdma.errors import InputError, P2pdmaError
from p2pdma.p2p.decide import DEFAULT_PROFILE, KERNEL_PROFILES, calc_map_type_and_dist
from p2pdma.p2p.matrix import compute_matrix
from p2pdma.pci.topology import Device, Topology
from p2pdma.report import text

MATRIX_SCHEMA = "p2pdma.matrix/1"
TOPO_SCHEMA = "p2pdma.topo/1"
EXAMPLES_SCHEMA = "p2pdma.examples/1"
MAX_WARNINGS = 8


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        self.exit(2, f"p2pdma: {message}\n")


def _source_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("machine (default: this machine's live /sys)")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--root", metavar="DIR", help="read a captured sysfs/procfs root instead of /")
    src.add_argument("--example", metavar="NAME", help="a bundled example machine (see `p2pdma examples`)")
    src.add_argument("--spec", metavar="FILE", help="a machine described in YAML/JSON (spec format)")
    for option, metavar, helptext, _ in SOURCE_EXTENSIONS:
        src.add_argument(option, metavar=metavar, help=helptext)
    p.add_argument(
        "--kernel",
        choices=KERNEL_PROFILES,
        default=DEFAULT_PROFILE,
        help="kernel rules: latest (per-port ACS decision, HMAT) or classic (6.x)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the README and tests)."""
    p = _Parser(prog="p2pdma", description="Which PCI functions can do peer-to-peer DMA, as the kernel decides.")
    p.add_argument("--version", action="version", version=f"p2pdma {__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    t = sub.add_parser("topo", help="the PCI tree: port types, links, ACS, host bridge whitelist")
    _source_args(t)
    t.add_argument("--dot", action="store_true", help="print Graphviz DOT (render with e.g. dot -Tsvg)")
    m = sub.add_parser("matrix", help="P2P map type and distance for every pair of functions")
    _source_args(m)
    m.add_argument("--all", action="store_true", help="include bridges, not only type 0 functions")
    e = sub.add_parser("explain", help="why a pair gets its verdict: path, ACS per port, fix")
    e.add_argument("provider", help="BDF of the device whose memory is reached (e.g. 0000:01:00.0)")
    e.add_argument("client", help="BDF of the device that issues the DMA")
    _source_args(e)
    x = sub.add_parser("examples", help="list the bundled example machines")
    x.add_argument("--json", action="store_true", help="print one JSON document")
    for mod in _extension_modules():
        name, handler = mod.register(sub, _source_args)
        COMMANDS[name] = handler
    return p


# Commands that live in their own modules: each has
# ``register(subparsers, add_source_args) -> (command name, handler(args) -> exit code)``.
EXTENSION_MODULES: tuple[str, ...] = (
    "p2pdma.report.cli",
    "p2pdma.sources.capture",
    "p2pdma.fleet.command",
    "p2pdma.model.simulate_cli",
    "p2pdma.check.command",
    "p2pdma.p2p.fix_cli",
)


def _extension_modules() -> list[Any]:
    import importlib

    return [importlib.import_module(m) for m in EXTENSION_MODULES]


# Further topology sources: (option, metavar, help, "module:function" taking the option's value
# and returning a Topology). Their options join the mutually exclusive machine group.
SOURCE_EXTENSIONS: tuple[tuple[str, str, str, str], ...] = (
    ("--hwloc", "FILE.xml", "an hwloc XML export (lstopo --of xml): PCI tree, ACS unknown",
     "p2pdma.sources.hwloc:read_hwloc"),
    ("--lspci", "FILE", "an lspci -xxxx dump (what lspci -F reads): tree from bus numbers, ACS from config",
     "p2pdma.sources.lspci:read_lspci"),
    ("--nccl-xml", "FILE.xml", "an NCCL topology XML (NCCL_TOPO_DUMP_FILE): PCI tree, ACS unknown",
     "p2pdma.sources.nccl:read_nccl_xml"),
)


def load_topology(args: argparse.Namespace) -> Topology:
    """The machine named by --root / --example / --spec (live /sys by default)."""
    import importlib

    for option, _, _, target in SOURCE_EXTENSIONS:
        value = getattr(args, option.lstrip("-").replace("-", "_"), None)
        if value:
            mod, _, fn = target.partition(":")
            loaded: Topology = getattr(importlib.import_module(mod), fn)(value)
            return loaded
    if args.example:
        return examples.load(args.example)
    if args.spec:
        from p2pdma.sources.spec import load_spec

        return load_spec(args.spec).topology(source=f"spec:{args.spec}")
    from p2pdma.sources.sysfs import read_root

    root = Path(args.root) if args.root else Path("/")
    from p2pdma.sources.capture import is_archive, load_capture

    if root.is_file() or is_archive(root):
        return load_capture(root)
    if not root.exists():
        raise InputError(f"{root}: no such directory")
    return read_root(root)


def _warn(topo: Topology) -> None:
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


def _resolve(topo: Topology, name: str) -> Device:
    try:
        return topo.resolve(name)
    except KeyError:
        raise InputError(f"unknown device {name!r} in machine {topo.name}") from None


def _progress(done: int, total: int) -> None:
    if total < 4096 or not sys.stderr.isatty():
        return
    width = 30
    filled = width * done // total
    end = "\n" if done == total else ""
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} rows", end=end, file=sys.stderr)


def cmd_topo(args: argparse.Namespace) -> int:
    topo = load_topology(args)
    _warn(topo)
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
        print(text.render_topo(topo))
    return 0


def matrix_document(topo: Topology, profile: str, include_bridges: bool = False) -> dict[str, Any]:
    """The ``p2pdma.matrix/1`` document for a machine."""
    mat = compute_matrix(topo, profile, include_bridges=include_bridges, progress=_progress)
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


def cmd_matrix(args: argparse.Namespace) -> int:
    topo = load_topology(args)
    _warn(topo)
    if args.json:
        print(json.dumps(matrix_document(topo, args.kernel, args.all)))
    else:
        mat = compute_matrix(topo, args.kernel, include_bridges=args.all, progress=_progress)
        print(text.render_matrix(mat))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    topo = load_topology(args)
    _warn(topo)
    p = _resolve(topo, args.provider)
    c = _resolve(topo, args.client)
    v = calc_map_type_and_dist(topo, p, c, args.kernel)
    if args.json:
        print(json.dumps(v.to_json(with_path=True), indent=1))
    else:
        print(text.render_explain(topo, v))
    return 0


def cmd_examples(args: argparse.Namespace) -> int:
    items = []
    for name in examples.names():
        spec = examples.load_spec(name)
        topo = spec.topology()
        items.append(
            {
                "name": name,
                "description": spec.description,
                "functions": len(topo.devices),
                "endpoints": len(topo.endpoints),
                "default": name == examples.DEFAULT_EXAMPLE,
            }
        )
    if args.json:
        print(json.dumps({"schema": EXAMPLES_SCHEMA, "examples": items}, indent=1))
    else:
        for it in items:
            star = " (default)" if it["default"] else ""
            print(f"{it['name']:<22} {it['endpoints']:>3} endpoints  {it['description']}{star}")
    return 0


COMMANDS: dict[str, Any] = {"topo": cmd_topo, "matrix": cmd_matrix, "explain": cmd_explain, "examples": cmd_examples}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: any P2pdmaError becomes one line on stderr and exit 2."""
    args = build_parser().parse_args(argv)
    try:
        code: int = COMMANDS[args.cmd](args)
        return code
    except P2pdmaError as exc:
        print(f"p2pdma: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "build_parser", "matrix_document"]
