"""Read an NCCL topology XML (``NCCL_TOPO_DUMP_FILE``) into a Topology.

NCCL writes ``<system><cpu numaid vendor familyid ...><pci busid class vendor device link_speed
link_width>...</pci></cpu></system>``. Its ``<pci>`` nesting skips levels: ncclTopoGetXmlFromSys()
(src/graph/xml.cc) climbs two sysfs levels at a time, so a switch's downstream ports and the root
ports are not in the file. They are put back as synthetic ports (PCI domain ``ffffDDDD``, one per
child bus, shown as synthetic) so paths have the kernel's shape and distances. Each ``<cpu>`` (a NUMA
node) becomes one synthetic host bridge ``nccl-cpuN``; there is no host bridge device, so the
P2PDMA whitelist cannot be evaluated (the host bridges are marked ``host_bridge_dev_known=False``,
never given a synthetic port as their device). No config space: ACS is unknown everywhere.

A ``<pci busid>`` that appears twice is one function, as in NCCL, whose graph keys nodes by bus id
(ncclTopoGetNode() finds the first; ncclTopoFuseXml() merges elements with the same attributes):
the children of every copy hang below the first. ``<nvlink target tclass>`` below a ``<gpu>`` gives
GPU pairs joined by NVLink (directly, or both to an NVSwitch); ``<net name>`` below a ``<nic>``
gives the function's OS names.

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
NVLINK_GPU_CLASSES = ("0x030200", "0x030000")  # tclass of an NVLink to another GPU
NVLINK_SWITCH_CLASS = "0x068000"  # PCI_NVSWITCH_CLASS in NCCL's topo.h
# CPU vendor strings as NCCL writes them (CPUID leaf 0, kvDictCpuVendor in src/graph/topo.cc), with
# the vendor the kernel's cpuinfo would show; RCCL writes "AMD".
CPU_VENDORS = {
    "GenuineIntel": "GenuineIntel",
    "AuthenticAMD": "AuthenticAMD",
    "HygonGenuine": "HygonGenuine",
    "CentaurHauls": "CentaurHauls",
    "  Shanghai  ": "  Shanghai  ",
}
MAX_NVSWITCH_GPUS = 1024  # GPUs of one NVSwitch fabric whose pairs are listed (an NVL576 rack has 576)
HYGON_FAMILY = 0x18  # Hygon Dhyana; no AMD part has this family



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
        self.by_bdf: dict[str, RawFunction] = {}
        self.attrs: dict[str, dict[str, str]] = {}
        self.nvlinks: list[tuple[str, str]] = []
        self.nvswitch: list[str] = []
        self.xgmi = 0
        self.repeats: dict[str, tuple[int, str]] = {}

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
        kids = [c for c in el if c.tag == "pci"]
        self._subs(el, busid)
        if busid in self.by_bdf:
            self._merge(el, busid, hb, parent, bool(kids))
            for k in kids:
                self.pci(k, self.by_bdf[busid].host_bridge, busid, numa)
            return
        if busid in self.bdfs:
            self.warnings.append(f"{busid}: also the address of a synthetic port; <pci> skipped")
            return
        dom, bus, _, _ = parse_bdf(busid)
        port = self._port(hb, parent, dom, bus, numa)
        cls = _hex(el.get("class"))
        bridge = bool(kids) or (cls is not None and cls >> 8 == 0x0604)
        pt = cfg.PCI_EXP_TYPE_UPSTREAM if bridge else None  # NCCL's bridges are switch upstream ports
        speed, width = _speed(el.get("link_speed")), _int(el.get("link_width"))
        driver = "nvidia" if any(c.tag == "gpu" for c in el) else None
        raw = RawFunction(
            bdf=busid, host_bridge=hb, parent_bdf=port,
            vendor=_hex(el.get("vendor") or el.get("vendorid")),
            device=_hex(el.get("device") or el.get("deviceid")),
            class_code=cls, numa_node=numa, driver=driver,
            header_type=cfg.HEADER_BRIDGE if bridge else cfg.HEADER_NORMAL, port_type=pt,
            max_speed=speed, cur_speed=speed, max_width=width or None, cur_width=width or None,
            os_names=self._net_names(el),
        )
        self.raws.append(raw)
        self.by_bdf[busid] = raw
        self.attrs[busid] = dict(el.attrib)
        self.bdfs.add(busid)
        for k in kids:
            self.pci(k, hb, busid, numa)

    def _merge(self, el: ET.Element, busid: str, hb: str, parent: str | None, has_kids: bool) -> None:
        """A repeated bus id: one function, as in NCCL's graph; differences are warned, not dropped."""
        raw = self.by_bdf[busid]
        first = self.attrs[busid]
        diff = sorted(k for k in set(first) | set(el.attrib) if first.get(k) != el.get(k))
        where = f"; below another <cpu> too (first place, {raw.host_bridge}, kept)" if raw.host_bridge != hb else ""
        count, known = self.repeats.get(busid, (0, ""))
        self.repeats[busid] = (count + 1, known or ", ".join(diff) + where)
        if has_kids and raw.header_type != cfg.HEADER_BRIDGE:
            raw.header_type, raw.port_type = cfg.HEADER_BRIDGE, cfg.PCI_EXP_TYPE_UPSTREAM
        names = self._net_names(el)
        if names:
            raw.os_names = tuple(dict.fromkeys((*raw.os_names, *names)))

    @staticmethod
    def _net_names(el: ET.Element) -> tuple[str, ...]:
        """``<nic><net name=...>`` below a ``<pci>``: the OS's names of its ports (mlx5_0, eth0)."""
        return tuple(dict.fromkeys(
            n.get("name", "") for nic in el if nic.tag == "nic" for n in nic if n.tag == "net" and n.get("name")
        ))

    def _subs(self, el: ET.Element, busid: str) -> None:
        """NVLink (and RCCL xGMI) elements below this function's ``<gpu>``."""
        for gpu in (c for c in el if c.tag == "gpu"):
            for link in gpu:
                if link.tag == "xgmi":
                    self.xgmi += 1
                if link.tag != "nvlink":
                    continue
                tclass = (link.get("tclass") or "").lower()
                if tclass == NVLINK_SWITCH_CLASS:
                    self.nvswitch.append(busid)
                elif tclass in NVLINK_GPU_CLASSES:
                    target = (link.get("target") or "").lower()
                    if BDF_RE.match(target):
                        self.nvlinks.append((busid, target))
                    else:
                        self.warnings.append(f"{busid}: <nvlink target={target[:40]!r}>: not a PCI address")

    def cpu_element(self, el: ET.Element, index: int) -> None:
        numaid = el.get("numaid", str(index))
        hb = f"nccl-cpu{numaid}"
        if hb in self.host_bridges:
            hb = f"nccl-cpu{numaid}-{index}"
        self.host_bridges.append(hb)
        numa = _int(numaid)
        numa = numa if numa is not None and numa >= 0 else None
        if self.cpu is None and el.get("vendor"):
            self.cpu = self._cpu(el)
        for c in el:
            if c.tag == "pci":
                self.pci(c, hb, None, numa)


    def _cpu(self, el: ET.Element) -> Cpu:
        """The CPU of a ``<cpu>`` element, its vendor spelled as the kernel's cpuinfo spells it."""
        written = el.get("vendor", "")
        fam = cpu_family(_int(el.get("familyid")) or 0)
        model = _int(el.get("modelid")) or 0
        vendor = CPU_VENDORS.get(written)
        if vendor is None and written == "AMD":
            vendor = "HygonGenuine" if fam == HYGON_FAMILY else "AuthenticAMD"
            self.warnings.append(
                f'CPU vendor written "AMD" (RCCL\'s spelling, not a CPUID vendor string): read as {vendor}'
                f" from family {fam:#x}" + (" (Hygon Dhyana; the kernel's AMD Zen rule does not apply to"
                                              " Hygon)" if vendor == "HygonGenuine" else "")
            )
        elif vendor is None:
            vendor = written
            self.warnings.append(f"CPU vendor {written[:40]!r} is not one NCCL knows; the AMD Zen rule"
                                 " (P2P through the host bridge) is taken as not applying")
        name = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD", "HygonGenuine": "Hygon"}.get(vendor, vendor.strip())
        return Cpu(vendor=vendor, family=fam, model=model,
                   model_name=f"{name} family {fam:#x} model {model:#x} ({el.get('arch', '?')})")


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
    for busid, (count, detail) in b.repeats.items():
        b.warnings.append(f"{busid}: listed {count + 1} times in the XML; merged into one function (NCCL keys"
                          " nodes by bus id)" + (f"; differing: {detail}" if detail else ""))
    real = [r for r in b.raws if r.bdf not in b.synthetic]
    if not real:
        raise SourceError(f"{where}: no <pci> elements below a <cpu>")
    topo = build_topology(b.raws, name=name, host_bridges=b.host_bridges, cpu=b.cpu, warnings=b.warnings,
                          source=f"nccl:{where}", ids=PciIds.find())
    devices = tuple(
        dataclasses.replace(d, device_name=b.synthetic[d.bdf], vendor_name=None) if d.bdf in b.synthetic else d
        for d in topo.devices
    )
    # No host bridge device is in the file: never let a synthetic root port stand in for one.
    hbs = tuple(dataclasses.replace(h, host_dev=None, host_bridge_dev_known=False) for h in topo.host_bridges)
    nvlinks, link_notes = _nvlink_pairs(b, topo)
    notes = [
        f"NCCL XML carries no PCI config space: ACS unknown for all {len(real)} functions;"
        " pairs below a common bridge are uncertain",
        f"NCCL lists only switch upstream ports and endpoints: {len(b.synthetic)} root and downstream ports"
        f" are synthetic (domain {SYNTH_DOMAIN >> 16:04x}xxxx), placed one per child bus",
        "host bridge device not in this input: NCCL XML lists none, each <cpu> is one host bridge"
        " (nccl-cpuN) and the P2PDMA whitelist cannot be evaluated"
        + (f"; the CPU is {b.cpu.model_name}" if b.cpu else "; the file names no CPU vendor"),
    ]
    notes.extend(link_notes)
    return dataclasses.replace(topo, devices=devices, host_bridges=hbs, nvlinks=nvlinks,
                               warnings=(*topo.warnings, *notes))


def _nvlink_pairs(b: _Builder, topo: Topology) -> tuple[frozenset[tuple[str, str]], list[str]]:
    """GPU pairs joined by NVLink, both orders: direct links, and every two GPUs on the NVSwitch."""
    pairs: set[tuple[str, str]] = set()
    notes: list[str] = []
    missing = sorted({t for _, t in b.nvlinks if t not in topo})
    for a, c in b.nvlinks:
        if a in topo and c in topo and a != c:
            pairs.update({(a, c), (c, a)})
    sw = sorted(set(b.nvswitch))
    if len(sw) > MAX_NVSWITCH_GPUS:
        notes.append(f"{len(sw)} GPUs on the NVSwitch (more than {MAX_NVSWITCH_GPUS}): their NVLink pairs ignored")
        sw = []
    for i, a in enumerate(sw):
        for c in sw[i + 1:]:
            pairs.update({(a, c), (c, a)})
    if missing:
        notes.append(f"<nvlink> targets not in the file: {', '.join(missing[:8])}")
    if pairs:
        gpus = len({a for a, _ in pairs})
        notes.append(f"NVLink joins {len(pairs) // 2} GPU pairs ({gpus} GPUs"
                     + (f", {len(sw)} on NVSwitch" if sw else "") + "): PCIe P2P is not their data path")
    if b.xgmi:
        notes.append(f"{b.xgmi} xGMI links listed (AMD Infinity Fabric between GPUs, not PCIe P2P);"
                     " not modelled")
    return frozenset(pairs), notes


def read_nccl_xml(path: str | os.PathLike[str]) -> Topology:
    """Read an NCCL topology XML file (``--nccl-xml FILE``); SourceError with one line on any trouble."""
    data, stem = files.read_capped(path, MAX_XML)
    return parse_nccl_xml(data, name=stem, where=str(path))


__all__ = ["cpu_family", "parse_nccl_xml", "read_nccl_xml"]
