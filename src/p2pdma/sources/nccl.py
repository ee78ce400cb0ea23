"""Read an NCCL topology XML (``NCCL_TOPO_DUMP_FILE``) into a Topology.

NCCL writes ``<system><cpu numaid vendor familyid ...><pci busid class vendor device link_speed
link_width>...</pci></cpu></system>``. Its ``<pci>`` nesting skips levels: ncclTopoGetXmlFromSys()
(src/graph/xml.cc) climbs two sysfs levels at a time, so a switch's downstream ports and the root
ports are not in the file. They are put back as synthetic ports (PCI domain ``ffffDDDD``, one per
child bus, shown as synthetic) so paths have the kernel's shape and distances. Each ``<cpu>`` (a NUMA
node) becomes one synthetic host bridge ``nccl-cpuN``; there is no host bridge device, so the
P2PDMA whitelist cannot be evaluated. No config space: ACS is unknown everywhere.

The XML is parsed with expat; any DOCTYPE or entity declaration is refused (NCCL writes none).
"""

from __future__ import annotations

import dataclasses
import os
import xml.etree.ElementTree as ET

from p2pdma.errors import SourceError
from p2pdma.pci import config as cfg
from p2pdma.pci.ids import PciIds
from p2pdma.pci.topology import BDF_RE, Cpu, RawFunction, Topology, build_topology, format_bdf, parse_bdf
from p2pdma.sources import files, safexml

MAX_XML = 16 << 20
MAX_NESTING = 256
SYNTH_DOMAIN = 0xFFFF0000



def _parse(data: bytes) -> ET.Element:
    """Parse with the shared untrusted-XML rules (see p2pdma.sources.safexml)."""
    return safexml.parse(data, max_nesting=MAX_NESTING, allow_plain_doctype=False, what="an NCCL topology")


def _hex(text: str | None) -> int | None:
    if not text:
        return None
    try:
        return int(text, 16)
    except ValueError:
        return None


def _speed(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return float(text.split()[0])
    except (ValueError, IndexError):
        return None


def _int(text: str | None) -> int | None:
    try:
        return int(text, 0) if text else None
    except ValueError:
        return None


def cpu_family(familyid: int) -> int:
    """The CPU family from NCCL's ``familyid`` (base + (extended << 4) of CPUID leaf 1): Zen's
    0xF + 0x8 is written 0x8F; a plain family number passes unchanged."""
    if familyid > 0xF and familyid & 0xF == 0xF:
        return 0xF + (familyid >> 4)
    return familyid


class _Builder:
    def __init__(self) -> None:
        self.raws: list[RawFunction] = []
        self.bdfs: set[str] = set()
        self.synthetic: dict[str, str] = {}
        self.ports: dict[tuple[str, int, int], str] = {}
        self.host_bridges: list[str] = []
        self.warnings: list[str] = []
        self.cpu: Cpu | None = None

    def _port(self, hb: str, parent: str | None, dom: int, bus: int, numa: int | None) -> str:
        """The synthetic port above bus ``bus`` (a root port below a CPU, else a downstream port)."""
        key = (parent or hb, dom, bus)
        if key in self.ports:
            return self.ports[key]
        fn = 0
        bdf = format_bdf(SYNTH_DOMAIN + (dom & 0xFFFF), bus, 0, 0)
        while bdf in self.bdfs and fn < 7:
            fn += 1
            bdf = format_bdf(SYNTH_DOMAIN + (dom & 0xFFFF), bus, 0, fn)
        kind = cfg.PCI_EXP_TYPE_ROOT_PORT if parent is None else cfg.PCI_EXP_TYPE_DOWNSTREAM
        self.raws.append(RawFunction(bdf=bdf, host_bridge=hb, parent_bdf=parent, class_code=0x060400,
                                     numa_node=numa, header_type=cfg.HEADER_BRIDGE, port_type=kind))
        self.bdfs.add(bdf)
        self.ports[key] = bdf
        what = "root port" if parent is None else f"switch downstream port below {parent}"
        self.synthetic[bdf] = f"synthetic {what} above bus {dom:04x}:{bus:02x} (not in the NCCL XML)"
        return bdf

    def pci(self, el: ET.Element, hb: str, parent: str | None, numa: int | None) -> None:
        busid = (el.get("busid") or "").lower()
        if not BDF_RE.match(busid):
            self.warnings.append(f"<pci busid={busid[:40]!r}>: not a PCI address; it and its subtree skipped")
            return
        if busid in self.bdfs:
            self.warnings.append(f"{busid}: listed twice in the XML; second one skipped")
            return
        dom, bus, _, _ = parse_bdf(busid)
        port = self._port(hb, parent, dom, bus, numa)
        kids = [c for c in el if c.tag == "pci"]
        cls = _hex(el.get("class"))
        bridge = bool(kids) or (cls is not None and cls >> 8 == 0x0604)
        pt = cfg.PCI_EXP_TYPE_UPSTREAM if bridge else None  # NCCL's bridges are switch upstream ports
        speed, width = _speed(el.get("link_speed")), _int(el.get("link_width"))
        driver = "nvidia" if any(c.tag == "gpu" for c in el) else None
        self.raws.append(RawFunction(
            bdf=busid, host_bridge=hb, parent_bdf=port,
            vendor=_hex(el.get("vendor") or el.get("vendorid")),
            device=_hex(el.get("device") or el.get("deviceid")),
            class_code=cls, numa_node=numa, driver=driver,
            header_type=cfg.HEADER_BRIDGE if bridge else cfg.HEADER_NORMAL, port_type=pt,
            max_speed=speed, cur_speed=speed, max_width=width or None, cur_width=width or None,
        ))
        self.bdfs.add(busid)
        for k in kids:
            self.pci(k, hb, busid, numa)

    def cpu_element(self, el: ET.Element, index: int) -> None:
        numaid = el.get("numaid", str(index))
        hb = f"nccl-cpu{numaid}"
        if hb in self.host_bridges:
            hb = f"nccl-cpu{numaid}-{index}"
        self.host_bridges.append(hb)
        numa = _int(numaid)
        numa = numa if numa is not None and numa >= 0 else None
        if self.cpu is None and el.get("vendor"):
            fam = cpu_family(_int(el.get("familyid")) or 0)
            self.cpu = Cpu(vendor=el.get("vendor", ""), family=fam, model=_int(el.get("modelid")) or 0,
                           model_name=f"{el.get('vendor')} family {fam:#x} ({el.get('arch', '?')})")
        for c in el:
            if c.tag == "pci":
                self.pci(c, hb, None, numa)


def parse_nccl_xml(data: bytes, *, name: str, where: str = "NCCL XML") -> Topology:
    """The Topology of an NCCL topology XML document; SourceError (one line) when malformed or empty."""
    try:
        top = _parse(data)
    except safexml.XmlRefused as exc:
        raise SourceError(f"{where}: refused: {exc}") from None
    except safexml.ExpatError as exc:
        raise SourceError(f"{where}: not well-formed XML ({exc})") from None
    if top.tag != "system":
        raise SourceError(f"{where}: not an NCCL topology (root element <{top.tag[:40]}>, expected <system>)")
    b = _Builder()
    for i, el in enumerate(c for c in top if c.tag == "cpu"):
        b.cpu_element(el, i)
    real = [r for r in b.raws if r.bdf not in b.synthetic]
    if not real:
        raise SourceError(f"{where}: no <pci> elements below a <cpu>")
    topo = build_topology(b.raws, name=name, host_bridges=b.host_bridges, cpu=b.cpu, warnings=b.warnings,
                          source=f"nccl:{where}", ids=PciIds.find())
    devices = tuple(
        dataclasses.replace(d, device_name=b.synthetic[d.bdf], vendor_name=None) if d.bdf in b.synthetic else d
        for d in topo.devices
    )
    notes = [
        f"NCCL XML carries no PCI config space: ACS unknown for all {len(real)} functions;"
        " pairs below a common bridge are uncertain",
        f"NCCL lists only switch upstream ports and endpoints: {len(b.synthetic)} root and downstream ports"
        f" are synthetic (domain {SYNTH_DOMAIN >> 16:04x}xxxx), placed one per child bus",
        "no host bridge devices in NCCL XML: each <cpu> is one synthetic host bridge (nccl-cpuN) and the"
        " P2PDMA whitelist cannot be evaluated; only an AMD Zen CPU allows P2P through the host bridge here",
    ]
    return dataclasses.replace(topo, devices=devices, warnings=(*topo.warnings, *notes))


def read_nccl_xml(path: str | os.PathLike[str]) -> Topology:
    """Read an NCCL topology XML file (``--nccl-xml FILE``); SourceError with one line on any trouble."""
    data, stem = files.read_capped(path, MAX_XML)
    return parse_nccl_xml(data, name=stem, where=str(path))


__all__ = ["cpu_family", "parse_nccl_xml", "read_nccl_xml"]
