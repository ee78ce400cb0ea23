"""Read the PCI tree of an hwloc XML export (``lstopo --of xml``, v2 format; v1 works too).

hwloc records per PCI function its address (``pci_busid``), class and ids (``pci_type``), and the
bridge nesting (``Bridge`` objects: ``bridge_type="0-1"`` a host bridge, ``"1-1"`` a PCI-to-PCI
bridge, with ``bridge_pci="DDDD:[BB-SS]"``). It records no config space, so ACS is unknown for
every function: the verdict marks every pair below a common bridge uncertain. Port types are
inferred from the nesting; ``pci_link_speed`` (GB/s of the whole link) cannot be split into
GT/s and width and is not used.

hwloc filters host bridge devices (class 0600) out, so where a root bus shows no 00.0 function the
device pci_host_bridge_dev() picks is not in the input: that host bridge is marked
``host_bridge_dev_known=False`` and no root port stands in for it. ``OSDev`` objects give the OS's
names below a function (``mlx5_0``, ``eth0``, ``nvme0n1``, ``cuda0``); the ``NVLinkBandwidth``
matrix (``distances2hetero``) gives GPU pairs joined by NVLink, directly or through NVSwitches.

The XML is parsed with expat directly, refusing any DTD internal subset or entity declaration
(no entity expansion, no external fetch); the plain ``<!DOCTYPE topology SYSTEM "hwloc2.dtd">``
line hwloc writes is accepted.
"""

from __future__ import annotations

import dataclasses
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
NVLINK_MATRIX = "NVLinkBandwidth"
MAX_MATRIX = 1024  # objects in one distance matrix (an NVL576 rack has 576 GPUs)
# Vendors a CPUModel string names unambiguously where hwloc gave no CPUVendor (none of them is AMD,
# so the kernel's AMD Zen rule cannot apply whatever the family)
MODEL_VENDORS = (("Intel(R)", "GenuineIntel"), ("POWER", "IBM POWER"))



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
        self.gp: dict[str, str] = {}  # "Type:gp_index" of PCI objects and their OSDevs -> BDF
        self.os_names: dict[str, list[str]] = {}
        self.nvswitch: set[str] = set()

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
        if obj.get("gp_index"):
            self.gp[f"{obj.get('type')}:{obj.get('gp_index')}"] = busid
        if obj.get("subtype") == "NVSwitch":
            self.nvswitch.add(busid)
        return raw

    def walk(self, top: ET.Element) -> None:
        # (element, host bridge, parent bridge BDF, NUMA node, PCI function it belongs to) - iterative
        stack: list[tuple[ET.Element, str | None, str | None, int | None, str | None]] = [
            (top, None, None, None, None)
        ]
        while stack:
            obj, hb, parent, numa, owner = stack.pop()
            kids_hb, kids_parent, kids_numa, kids_owner = hb, parent, numa, owner
            if obj.tag == "info" and self.release is None and obj.get("name") == "OSRelease":
                self.release = obj.get("value")
            if obj.tag == "object":
                kind = obj.get("type")
                if kind in ("Package", "Socket") and self.cpu is None:
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
                            kids_hb, kids_parent, kids_owner = raw.host_bridge, raw.bdf, raw.bdf
                elif kind == "PCIDev":
                    raw = self._function(obj, hb, parent, numa, bridge=False)
                    if raw is not None:
                        kids_owner = raw.bdf
                    if raw is not None and raw.header_type == cfg.HEADER_BRIDGE:
                        kids_hb, kids_parent = raw.host_bridge, raw.bdf
                elif kind == "OSDev" and owner is not None:
                    if obj.get("name"):
                        self.os_names.setdefault(owner, []).append(obj.get("name", "")[:64])
                    if obj.get("gp_index"):
                        self.gp[f"OSDev:{obj.get('gp_index')}"] = owner
                elif kind not in ("OSDev", "Misc") and hb is None:
                    single = _bitmap_single(obj.get("nodeset"))
                    if obj.get("nodeset") is not None:
                        kids_numa = single
            for child in reversed(list(obj)):
                stack.append((child, kids_hb, kids_parent, kids_numa, kids_owner))

    def nvlinks(self, top: ET.Element) -> set[tuple[str, str]]:
        """GPU pairs of the ``NVLinkBandwidth`` matrices: a non-zero entry between two GPUs, or both
        GPUs linked to NVSwitches (one switched fabric, as NCCL models it with one NVS node)."""
        pairs: set[tuple[str, str]] = set()
        for dist in top.iter("distances2hetero"):
            if dist.get("name") != NVLINK_MATRIX:
                continue
            names = " ".join(i.text or "" for i in dist if i.tag == "indexes").split()
            n = len(names)
            if n > MAX_MATRIX:
                self.warnings.append(f"NVLinkBandwidth matrix of {n} objects (more than {MAX_MATRIX}); ignored")
                continue
            try:
                values = [int(v) for v in " ".join(u.text or "" for u in dist if u.tag == "u64values").split()]
            except ValueError:
                self.warnings.append("NVLinkBandwidth matrix with non-numeric values; ignored")
                continue
            if len(values) != n * n:
                self.warnings.append(f"NVLinkBandwidth matrix of {n} objects has {len(values)} values; ignored")
                continue
            bdfs = [self.gp.get(x) for x in names]
            on_switch: set[str] = set()
            for i, a in enumerate(bdfs):
                for j, c in enumerate(bdfs):
                    if i == j or a is None or c is None or a == c or not (values[i * n + j] or values[j * n + i]):
                        continue
                    if c in self.nvswitch and a not in self.nvswitch:
                        on_switch.add(a)
                    elif a not in self.nvswitch and c not in self.nvswitch:
                        pairs.update({(a, c), (c, a)})
            ordered = sorted(on_switch)
            for i, a in enumerate(ordered):
                for c in ordered[i + 1:]:
                    pairs.update({(a, c), (c, a)})
        return pairs

    def _cpu(self, pkg: ET.Element) -> None:
        vendor = _info(pkg, "CPUVendor")
        model_name = _info(pkg, "CPUModel") or ""
        if not vendor:
            vendor = next((v for key, v in MODEL_VENDORS if key in model_name), None)
            if vendor is None:
                return
            self.warnings.append(f"hwloc gives no CPUVendor; {vendor} read from CPUModel {model_name[:60]!r}"
                                 " (family and model numbers not given)")
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
    nvlinks = w.nvlinks(top)
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
    hbs = []
    for hb in topo.host_bridges:
        at_zero = [b for b in hb.root_devices if topo[b].devfn == 0 and topo[b].bus == hb.bus]
        if at_zero:
            hbs.append(dataclasses.replace(hb, host_dev=at_zero[0]))
            continue
        hbs.append(dataclasses.replace(hb, host_dev=None, host_bridge_dev_known=False))
        first = f" (the first it lists is {hb.root_devices[0]})" if hb.root_devices else ""
        notes.append(
            f"{hb.name}: host bridge device not in this input: hwloc lists no 00.0 function on the root bus"
            f"{first}, as it filters host bridge devices; the host bridge whitelist cannot be evaluated"
        )
    if nvlinks:
        gpus = len({a for a, _ in nvlinks})
        notes.append(f"NVLink joins {len(nvlinks) // 2} GPU pairs ({gpus} GPUs"
                     + (f", {len(w.nvswitch)} NVSwitches" if w.nvswitch else "")
                     + "): PCIe P2P is not their data path")
    devices = tuple(
        dataclasses.replace(d, os_names=tuple(dict.fromkeys(w.os_names[d.bdf]))) if d.bdf in w.os_names else d
        for d in topo.devices
    )
    return dataclasses.replace(topo, devices=devices, host_bridges=tuple(hbs), nvlinks=frozenset(nvlinks),
                               warnings=(*topo.warnings, *notes))


def read_hwloc(path: str | os.PathLike[str]) -> Topology:
    """Read an hwloc XML file (``--hwloc FILE.xml``); SourceError with one line on any trouble."""
    data, stem = files.read_capped(path, MAX_XML)
    return parse_hwloc(data, name=stem, where=str(path))
