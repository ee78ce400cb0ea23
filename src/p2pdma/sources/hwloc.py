"""Read the PCI tree of an hwloc XML export (``lstopo --of xml``, v2 format; v1 works too).

hwloc records per PCI function its address (``pci_busid``), class and ids (``pci_type``), and the
bridge nesting (``Bridge`` objects: ``bridge_type="0-1"`` a host bridge, ``"1-1"`` a PCI-to-PCI
bridge, with ``bridge_pci="DDDD:[BB-SS]"``). It records no config space, so ACS is unknown for
every function: the verdict marks every pair below a common bridge uncertain. Port types are
inferred from the nesting; ``pci_link_speed`` (GB/s of the whole link) cannot be split into
GT/s and width and is not used.

The XML is parsed with expat directly, refusing any DTD internal subset or entity declaration
(no entity expansion, no external fetch); the plain ``<!DOCTYPE topology SYSTEM "hwloc2.dtd">``
line hwloc writes is accepted.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET

from p2pdma.errors import SourceError
from p2pdma.pci import config as cfg
from p2pdma.pci.ids import PciIds
from p2pdma.pci.topology import BDF_RE, Cpu, RawFunction, Topology, build_topology, parse_bdf
from p2pdma.sources import files, safexml

MAX_XML = 64 << 20
MAX_NESTING = 512
BRIDGE_PCI_RE = re.compile(r"^(?P<dom>[0-9a-fA-F]{4,8}):\[(?P<sec>[0-9a-fA-F]{2})-(?P<sub>[0-9a-fA-F]{2})\]$")
PCI_TYPE_RE = re.compile(
    r"^(?P<cls>[0-9a-fA-F]{4}) \[(?P<ven>[0-9a-fA-F]{4}):(?P<dev>[0-9a-fA-F]{4})\]"
    r" \[(?P<sven>[0-9a-fA-F]{4}):(?P<sdev>[0-9a-fA-F]{4})\] (?P<rev>[0-9a-fA-F]{2})(?: (?P<progif>[0-9a-fA-F]{2}))?"
)
HOST_TO_PCI = "0-1"
PCI_TO_PCI = "1-1"



def _parse_xml(data: bytes) -> ET.Element:
    """Parse with the shared untrusted-XML rules (see p2pdma.sources.safexml)."""
    return safexml.parse(data, max_nesting=MAX_NESTING, allow_plain_doctype=True, what="hwloc XML")


def _bitmap_single(text: str | None) -> int | None:
    """The one bit set in an hwloc bitmap string (``0x00000002`` or ``0x0,0x1``), else None."""
    if not text:
        return None
    try:
        value = int("".join(p.strip()[2:] if p.strip().startswith("0x") else p.strip() for p in text.split(",")), 16)
    except ValueError:
        return None
    if value <= 0 or value & (value - 1):
        return None
    return value.bit_length() - 1


def _info(obj: ET.Element, key: str) -> str | None:
    for child in obj:
        if child.tag == "info" and child.get("name") == key:
            return child.get("value")
    return None


class _Walker:
    """One pass over the object tree, collecting PCI functions with their parent and host bridge."""

    def __init__(self) -> None:
        self.raws: list[RawFunction] = []
        self.host_bridges: list[str] = []
        self.warnings: list[str] = []
        self.seen: set[str] = set()
        self.cpu: Cpu | None = None
        self.release: str | None = None

    def _function(self, obj: ET.Element, host_bridge: str | None, parent: str | None,
                  numa: int | None, bridge: bool) -> RawFunction | None:
        busid = obj.get("pci_busid", "")
        if not BDF_RE.match(busid):
            self.warnings.append(
                f"hwloc {obj.get('type')} object with pci_busid {busid[:40]!r}: not a PCI address, skipped"
            )
            return None
        busid = busid.lower()
        if busid in self.seen:
            self.warnings.append(f"{busid}: listed twice in the XML, second one skipped")
            return None
        self.seen.add(busid)
        m = PCI_TYPE_RE.match(obj.get("pci_type", ""))
        vendor = device = class_code = None
        if m:
            vendor, device = int(m["ven"], 16), int(m["dev"], 16)
            class_code = (int(m["cls"], 16) << 8) | int(m["progif"] or "0", 16)
        else:
            self.warnings.append(f"{busid}: pci_type {obj.get('pci_type', '')[:60]!r} not understood; ids unknown")
        if host_bridge is None:
            dom, bus, _, _ = parse_bdf(busid)
            host_bridge = f"pci{dom:04x}:{bus:02x}"
            self.warnings.append(f"{busid}: not below an hwloc host bridge; placed on host bridge {host_bridge}")
            self.host_bridges.append(host_bridge)
        is_bridge = bridge or (class_code is not None and class_code >> 8 == 0x0604)
        raw = RawFunction(
            bdf=busid,
            host_bridge=host_bridge,
            parent_bdf=parent,
            vendor=vendor,
            device=device,
            class_code=class_code,
            numa_node=numa,
            header_type=cfg.HEADER_BRIDGE if is_bridge else cfg.HEADER_NORMAL,
        )
        self.raws.append(raw)
        return raw

    def walk(self, top: ET.Element) -> None:
        # (element, host bridge, parent bridge BDF, NUMA node) - iterative, any depth
        stack: list[tuple[ET.Element, str | None, str | None, int | None]] = [(top, None, None, None)]
        while stack:
            obj, hb, parent, numa = stack.pop()
            kids_hb, kids_parent, kids_numa = hb, parent, numa
            if obj.tag == "info" and self.release is None and obj.get("name") == "OSRelease":
                self.release = obj.get("value")
            if obj.tag == "object":
                kind = obj.get("type")
                if kind == "Package" and self.cpu is None:
                    self._cpu(obj)
                if kind == "Bridge":
                    btype = obj.get("bridge_type", "")
                    if btype.startswith("0-"):
                        bm = BRIDGE_PCI_RE.match(obj.get("bridge_pci", ""))
                        if bm is None:
                            bad = obj.get("bridge_pci", "")[:40]
                            self.warnings.append(f"host bridge with bridge_pci {bad!r} not understood; skipped")
                            continue
                        kids_hb = f"pci{int(bm['dom'], 16):04x}:{int(bm['sec'], 16):02x}"
                        kids_parent = None
                        self.host_bridges.append(kids_hb)
                    else:
                        if btype != PCI_TO_PCI:
                            self.warnings.append(f"{obj.get('pci_busid')}: bridge type {btype!r} read as PCI-to-PCI")
                        raw = self._function(obj, hb, parent, numa, bridge=True)
                        if raw is not None:
                            kids_hb, kids_parent = raw.host_bridge, raw.bdf
                elif kind == "PCIDev":
                    raw = self._function(obj, hb, parent, numa, bridge=False)
                    if raw is not None and raw.header_type == cfg.HEADER_BRIDGE:
                        kids_hb, kids_parent = raw.host_bridge, raw.bdf
                elif kind not in ("OSDev", "Misc") and hb is None:
                    single = _bitmap_single(obj.get("nodeset"))
                    if obj.get("nodeset") is not None:
                        kids_numa = single
            for child in reversed(list(obj)):
                stack.append((child, kids_hb, kids_parent, kids_numa))

    def _cpu(self, pkg: ET.Element) -> None:
        vendor = _info(pkg, "CPUVendor")
        if not vendor:
            return
        try:
            family = int(_info(pkg, "CPUFamilyNumber") or "0")
            model = int(_info(pkg, "CPUModelNumber") or "0")
        except ValueError:
            family = model = 0
        self.cpu = Cpu(vendor=vendor, family=family, model=model, model_name=_info(pkg, "CPUModel") or "")


def parse_hwloc(data: bytes, *, name: str, where: str = "hwloc XML") -> Topology:
    """The Topology of an hwloc XML document's PCI tree; SourceError (one line) when malformed,
    hostile, or without PCI objects."""
    try:
        top = _parse_xml(data)
    except safexml.XmlRefused as exc:
        raise SourceError(f"{where}: refused: {exc}") from None
    except safexml.ExpatError as exc:
        raise SourceError(f"{where}: not well-formed XML ({exc})") from None
    if top.tag != "topology":
        raise SourceError(f"{where}: not an hwloc topology (root element <{top.tag[:40]}>)")
    w = _Walker()
    w.walk(top)
    if not w.raws:
        raise SourceError(f"{where}: no PCI objects (export with I/O objects: lstopo --whole-io --of xml)")
    topo = build_topology(
        w.raws,
        name=name,
        host_bridges=w.host_bridges,
        cpu=w.cpu,
        kernel_release=w.release,
        warnings=w.warnings,
        source=f"hwloc:{where}",
        ids=PciIds.find(),
    )
    notes = [
        f"hwloc XML carries no PCI config space: ACS unknown for all {len(topo.devices)} functions;"
        " pairs below a common bridge are uncertain"
    ]
    for hb in topo.host_bridges:
        if not any(topo[b].devfn == 0 for b in hb.root_devices):
            used = f"uses {hb.host_dev}" if hb.host_dev else "finds no device"
            notes.append(
                f"{hb.name}: hwloc lists no 00.0 function on the root bus (hwloc filters host bridge devices);"
                f" the host bridge whitelist check {used}"
            )
    from dataclasses import replace

    return replace(topo, warnings=(*topo.warnings, *notes))


def read_hwloc(path: str | os.PathLike[str]) -> Topology:
    """Read an hwloc XML file (``--hwloc FILE.xml``); SourceError with one line on any trouble."""
    data, stem = files.read_capped(path, MAX_XML)
    return parse_hwloc(data, name=stem, where=str(path))
