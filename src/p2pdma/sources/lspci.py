"""Read an ``lspci -xxxx`` dump (the format ``lspci -F FILE`` reads) into a Topology.

Each function is a line ``[DDDD:]BB:DD.F <anything>`` followed by hex lines ``OFF: xx xx ...``
(64 bytes with ``-x``, 256 with ``-xxx``, 4096 with ``-xxxx`` as root), as lib/dump.c of pciutils
parses them; indented lines (``-v`` output) are skipped. The dump has no parent links: the tree is
rebuilt from each bridge's secondary and subordinate bus numbers (config 0x19/0x1a), as the
kernel's bus scan (pci_scan_bridge()) walks them. With 4096 bytes per function ACS is known.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from p2pdma.errors import SourceError
from p2pdma.pci import config as cfg
from p2pdma.pci.ids import PciIds
from p2pdma.pci.topology import RawFunction, Topology, build_topology, format_bdf
from p2pdma.sources import files

MAX_DUMP = 64 << 20
MAX_FUNCTIONS = 65536
HEADER_RE = re.compile(
    r"^(?:(?P<dom>[0-9a-fA-F]{4,8}):)?(?P<bus>[0-9a-fA-F]{2}):(?P<dev>[0-9a-fA-F]{2})\.(?P<fn>[0-7])(?:\s|$)"
)
HEX_RE = re.compile(r"^(?P<off>[0-9a-fA-F]{2,8}):(?P<bytes>(?: [0-9a-fA-F]{2})*)\s*$")


@dataclasses.dataclass
class _Func:
    domain: int
    bus: int
    dev: int
    fn: int
    data: bytearray
    line: int

    @property
    def bdf(self) -> str:
        return format_bdf(self.domain, self.bus, self.dev, self.fn)


def parse_dump(text: str, *, where: str = "lspci dump") -> list[_Func]:
    """The functions of a dump with their config bytes; SourceError naming the first bad line."""
    funcs: list[_Func] = []
    cur: _Func | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip("\r")
        if not line.strip():
            cur = None
            continue
        if line[0] in " \t":
            continue  # -v details
        m = HEADER_RE.match(line)
        if m:
            if len(funcs) >= MAX_FUNCTIONS:
                raise SourceError(f"{where}: more than {MAX_FUNCTIONS} functions")
            cur = _Func(int(m["dom"] or "0", 16), int(m["bus"], 16), int(m["dev"], 16), int(m["fn"]),
                        bytearray(), lineno)
            funcs.append(cur)
            continue
        h = HEX_RE.match(line)
        if h and cur is not None:
            off = int(h["off"], 16)
            values = [int(x, 16) for x in h["bytes"].split()]
            if off + len(values) > cfg.PCI_CFG_SPACE_EXP_SIZE:
                raise SourceError(f"{where}:{lineno}: config space past 4096 bytes")
            if off > len(cur.data):
                raise SourceError(f"{where}:{lineno}: hex line at {off:#x} leaves a gap after {len(cur.data):#x}")
            cur.data[off:off + len(values)] = bytes(values)
            continue
        what = "hex line before any function line" if h else "not an lspci -x dump line"
        raise SourceError(f"{where}:{lineno}: {what}: {line[:60]!r}")
    return funcs


def _parents(funcs: list[_Func], infos: dict[str, cfg.ConfigInfo | None],
             warnings: list[str]) -> dict[str, str | None]:
    """Each function's upstream bridge: the bridge whose secondary bus is the function's bus."""
    by_secondary: dict[tuple[int, int], str] = {}
    ranges: list[tuple[int, int, int, str]] = []
    for f in funcs:
        info = infos[f.bdf]
        if info is None or info.header_type != cfg.HEADER_BRIDGE or not info.secondary_bus:
            continue
        sec, sub = info.secondary_bus, info.subordinate_bus or info.secondary_bus
        key = (f.domain, sec)
        if key in by_secondary:
            warnings.append(f"{f.bdf}: secondary bus {sec:02x} already behind {by_secondary[key]}; ignored")
            continue
        by_secondary[key] = f.bdf
        ranges.append((f.domain, sec, sub, f.bdf))
    out: dict[str, str | None] = {}
    for f in funcs:
        parent = by_secondary.get((f.domain, f.bus))
        if parent == f.bdf:
            parent = None
        if parent is None:
            holders = [r for r in ranges if r[0] == f.domain and r[1] < f.bus <= r[2] and r[3] != f.bdf]
            if holders:
                best = min(holders, key=lambda r: r[2] - r[1])
                parent = best[3]
                warnings.append(
                    f"{f.bdf}: no bridge has bus {f.bus:02x} as its secondary bus; placed below {parent},"
                    " whose bus range holds it (SR-IOV VFs on a bus of their own look like this)"
                )
        out[f.bdf] = parent
    return out


def topology_from_dump(text: str, *, name: str, where: str = "lspci dump") -> Topology:
    """The Topology of an ``lspci -x``/``-xxx``/``-xxxx`` dump; SourceError when it holds nothing usable."""
    funcs = parse_dump(text, where=where)
    warnings: list[str] = []
    seen: set[str] = set()
    usable: list[_Func] = []
    infos: dict[str, cfg.ConfigInfo | None] = {}
    for f in funcs:
        if f.bdf in seen:
            warnings.append(f"{f.bdf}: listed twice (line {f.line}); second one skipped")
            continue
        seen.add(f.bdf)
        if len(f.data) < cfg.PCI_STD_HEADER_SIZEOF:
            warnings.append(f"{f.bdf}: only {len(f.data)} bytes of config space (line {f.line}); skipped")
            continue
        try:
            infos[f.bdf] = cfg.decode(bytes(f.data))
        except ValueError as exc:
            warnings.append(f"{f.bdf}: {exc}; skipped")
            continue
        usable.append(f)
    if not usable:
        raise SourceError(f"{where}: no PCI function with config bytes (make it with lspci -xxxx, as root)")
    parents = _parents(usable, infos, warnings)
    # Host bridge: the root bus at the top of each function's chain.
    hb: dict[str, str] = {}
    by_bdf = {f.bdf: f for f in usable}
    for f in usable:
        top, seen_up = f, {f.bdf}
        while parents[top.bdf] is not None:
            up = parents[top.bdf]
            assert up is not None
            if up in seen_up:
                break
            seen_up.add(up)
            top = by_bdf[up]
        hb[f.bdf] = f"pci{top.domain:04x}:{top.bus:02x}"
    # A dump made as root with -xxxx shows 4096 bytes wherever the kernel has them; then a
    # 256-byte PCIe function really has no extended space (cfg_size 256) and so no ACS.
    full = any(len(f.data) >= cfg.PCI_CFG_SPACE_EXP_SIZE for f in usable)
    raws = [
        RawFunction(
            bdf=f.bdf,
            host_bridge=hb[f.bdf],
            parent_bdf=parents[f.bdf],
            config=bytes(f.data),
            config_space_size=len(f.data) if full and len(f.data) >= cfg.PCI_CFG_SPACE_SIZE else None,
        )
        for f in usable
    ]
    topo = build_topology(raws, name=name, host_bridges=sorted(set(hb.values())), warnings=warnings,
                          source=f"lspci:{where}", ids=PciIds.find())
    notes = ["lspci dump has no CPU information: an AMD Zen CPU (P2P through the host bridge) cannot be"
             " recognised, only the host bridge whitelist is evaluated"]
    unknown = [d.bdf for d in topo.devices if not d.acs_known]
    if unknown:
        notes.append(
            f"ACS unknown for {len(unknown)} of {len(topo.devices)} functions: the dump stops before the"
            " extended config space (make it as root with lspci -xxxx)"
        )
    return dataclasses.replace(topo, warnings=(*topo.warnings, *notes))


def read_lspci(path: str | os.PathLike[str]) -> Topology:
    """Read an ``lspci -xxxx`` dump file (``--lspci FILE``); SourceError with one line on any trouble."""
    p = Path(path)
    data, _ = files.read_capped(p, MAX_DUMP)
    if b"\0" in data:
        raise SourceError(f"{p}: binary data, not an lspci dump")
    return topology_from_dump(data.decode("utf-8", "replace"), name=p.stem, where=str(p))


__all__ = ["parse_dump", "read_lspci", "topology_from_dump"]
