"""Read an ``lspci`` dump into a Topology: ``-xxxx``/``-xxx``/``-x`` hex, ``-vv``/``-vvv`` text, or both.

Each function starts with a line ``[DDDD:]BB:DD.F <class>: <name>`` followed by indented ``-v`` detail
lines and/or hex lines ``OFF: xx xx ...`` (64 bytes with ``-x``, 256 with ``-xxx``, 4096 with
``-xxxx`` as root), as lib/dump.c of pciutils parses them. The dump has no parent links: the tree is
rebuilt from each bridge's secondary and subordinate bus numbers (config 0x19/0x1a, or the text's
``Bus:`` line), as the kernel's bus scan (pci_scan_bridge()) walks them; CardBus bridges (header
type 2) carry the same bus numbers and are bridges too.

The ``-vv`` text says what the hex may not reach: ``ACSCap``/``ACSCtl`` of the ACS extended
capability, the PCIe port type, ``LnkCap``/``LnkSta``. lspci lists extended capabilities only when
it could read them (as root), so a root-made ``-vv`` dump also tells which functions have no ACS.
Where text and hex both give a field and disagree, a warning names the field and the hex is used.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from p2pdma.errors import SourceError
from p2pdma.pci import config as cfg
from p2pdma.pci.ids import PciIds
from p2pdma.pci.topology import Device, HostBridge, RawFunction, Topology, build_topology, format_bdf
from p2pdma.sources import files

MAX_DUMP = 64 << 20
MAX_FUNCTIONS = 65536
MAX_LINE = 512  # text kept per line: lspci's lines are far shorter, and the patterns stay linear
HEADER_RE = re.compile(
    r"^(?:(?P<dom>[0-9a-fA-F]{4,8}):)?(?P<bus>[0-9a-fA-F]{2}):(?P<dev>[0-9a-fA-F]{2})\.(?P<fn>[0-7])(?:\s|$)"
)
HEX_RE = re.compile(r"^(?P<off>[0-9a-fA-F]{2,8}):(?P<bytes>(?: [0-9a-fA-F]{2})*)\s*$")
CODE_RE = re.compile(r"[0-9a-fA-F]{4}")
IDS_RE = re.compile(r"\[(?P<ven>[0-9a-fA-F]{4}):(?P<dev>[0-9a-fA-F]{4})\]")
PROGIF_RE = re.compile(r"\(prog-if (?P<pi>[0-9a-fA-F]{2})")
CAP_RE = re.compile(r"^Capabilities: \[(?P<off>[0-9a-fA-F]+)(?: v\d+)?\] (?P<name>.*)$")
BUS_RE = re.compile(r"^Bus: primary=(?P<pri>[0-9a-fA-F]{2}), secondary=(?P<sec>[0-9a-fA-F]{2}),"
                    r" subordinate=(?P<sub>[0-9a-fA-F]{2})")
FLAG_RE = re.compile(r"(?P<name>[A-Za-z]+)(?P<v>[+-])")
SPEED_RE = re.compile(r"Speed (?P<speed>[0-9.]+)GT/s")
WIDTH_RE = re.compile(r"Width x(?P<width>\d+)")
PORT_RE = re.compile(r"Port #(?P<port>\d+)")
ECVS_RE = re.compile(r"(?:EgressVectorSize|ECVSize|ECVS)[=: ]\s*(?P<n>\d+)")

# ACSCap/ACSCtl flag names as ls-ecaps.c of pciutils prints them, with their register bits
ACS_TEXT_BITS = {
    "SrcValid": cfg.PCI_ACS_SV,
    "TransBlk": cfg.PCI_ACS_TB,
    "ReqRedir": cfg.PCI_ACS_RR,
    "CmpltRedir": cfg.PCI_ACS_CR,
    "UpstreamFwd": cfg.PCI_ACS_UF,
    "EgressCtrl": cfg.PCI_ACS_EC,
    "DirectTrans": cfg.PCI_ACS_DT,
}
# The port types ls-caps.c prints after "Express (vN) "
EXPRESS_TYPES = (
    ("Root Complex Integrated Endpoint", cfg.PCI_EXP_TYPE_RC_END),
    ("Root Complex Event Collector", cfg.PCI_EXP_TYPE_RC_EC),
    ("Legacy Endpoint", cfg.PCI_EXP_TYPE_LEG_END),
    ("Endpoint", cfg.PCI_EXP_TYPE_ENDPOINT),
    ("Root Port", cfg.PCI_EXP_TYPE_ROOT_PORT),
    ("Upstream Port", cfg.PCI_EXP_TYPE_UPSTREAM),
    ("Downstream Port", cfg.PCI_EXP_TYPE_DOWNSTREAM),
    ("PCI-Express to PCI/PCI-X Bridge", cfg.PCI_EXP_TYPE_PCI_BRIDGE),
    ("PCI/PCI-X to PCI-Express Bridge", cfg.PCI_EXP_TYPE_PCIE_BRIDGE),
)
# Class names lspci prints without -n (pci.ids "C" section), for -vv-only dumps
CLASS_NAMES = {
    "Non-VGA unclassified device": 0x0000, "VGA compatible unclassified device": 0x0001,
    "SCSI storage controller": 0x0100, "IDE interface": 0x0101, "RAID bus controller": 0x0104,
    "SATA controller": 0x0106, "Serial Attached SCSI controller": 0x0107,
    "Non-Volatile memory controller": 0x0108, "Mass storage controller": 0x0180,
    "Ethernet controller": 0x0200, "Infiniband controller": 0x0207, "Fabric controller": 0x0208,
    "Network controller": 0x0280, "VGA compatible controller": 0x0300, "3D controller": 0x0302,
    "Display controller": 0x0380, "Multimedia audio controller": 0x0401, "Audio device": 0x0403,
    "Multimedia controller": 0x0480, "RAM memory": 0x0500, "Memory controller": 0x0580,
    "Host bridge": 0x0600, "ISA bridge": 0x0601, "PCI bridge": 0x0604, "CardBus bridge": 0x0607,
    "Bridge": 0x0680, "Communication controller": 0x0780, "Serial controller": 0x0700,
    "PIC": 0x0800, "IOMMU": 0x0806, "System peripheral": 0x0880, "Co-processor": 0x0b40,
    "FireWire (IEEE 1394)": 0x0c00, "USB controller": 0x0c03, "SMBus": 0x0c05,
    "Serial bus controller": 0x0c80, "Encryption controller": 0x1080,
    "Signal processing controller": 0x1180, "Processing accelerators": 0x1200,
    "Non-Essential Instrumentation": 0x1300, "Unassigned class": 0xFF00,
}


@dataclasses.dataclass
class _Text:
    """What a function's header line and ``-v`` detail lines say (None: not shown)."""

    class_name: str = ""
    class_code: int | None = None  # 24-bit, from [cccc] (-nn) or the class name
    class_from_code: bool = False
    vendor: int | None = None
    device: int | None = None
    bus: tuple[int, int, int] | None = None  # primary, secondary, subordinate
    port_type: int | None = None
    port_number: int | None = None
    max_speed: float | None = None
    max_width: int | None = None
    cur_speed: float | None = None
    cur_width: int | None = None
    caps: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    acs_offset: int | None = None
    acs_cap: int | None = None
    acs_ctrl: int | None = None
    acs_ecvs: int | None = None
    denied: bool = False
    driver: str | None = None
    detail_lines: int = 0

    @property
    def ext_caps_shown(self) -> bool:
        return any(off >= cfg.PCI_EXT_CAP_START for off, _ in self.caps)

    @property
    def acs_shown(self) -> bool:
        return any(name.startswith("Access Control Services") for _, name in self.caps)


@dataclasses.dataclass
class _Func:
    domain: int
    bus: int
    dev: int
    fn: int
    data: bytearray
    line: int
    header: str = ""
    text: list[str] = dataclasses.field(default_factory=list)

    @property
    def bdf(self) -> str:
        return format_bdf(self.domain, self.bus, self.dev, self.fn)


def parse_dump(text: str, *, where: str = "lspci dump") -> list[_Func]:
    """The functions of a dump with their config bytes and detail lines; SourceError naming the
    first bad line."""
    funcs: list[_Func] = []
    cur: _Func | None = None
    if text.startswith("\ufeff"):
        text = text[1:]  # a UTF-8 byte-order mark (editors on Windows add one)
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip("\r")
        if not line.strip():
            cur = None
            continue
        if line[0] in " \t":
            if cur is not None:
                cur.text.append(line.strip()[:MAX_LINE])
            continue
        m = HEADER_RE.match(line)
        if m:
            if len(funcs) >= MAX_FUNCTIONS:
                raise SourceError(f"{where}: more than {MAX_FUNCTIONS} functions")
            cur = _Func(int(m["dom"] or "0", 16), int(m["bus"], 16), int(m["dev"], 16), int(m["fn"]),
                        bytearray(), lineno, header=line[:MAX_LINE])
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
        what = "hex line before any function line" if h else "not an lspci dump line"
        raise SourceError(f"{where}:{lineno}: {what}: {line[:60]!r}")
    return funcs


def _flags(text: str) -> int:
    value = 0
    for m in FLAG_RE.finditer(text):
        bit = ACS_TEXT_BITS.get(m["name"])
        if bit is not None and m["v"] == "+":
            value |= bit
    return value


def _speed(text: str) -> float | None:
    m = SPEED_RE.search(text)
    return float(m["speed"]) if m else None


def parse_text(f: _Func) -> _Text:
    """The facts of one function's header line and ``-v``/``-vv`` lines."""
    t = _Text()
    # "BB:DD.F Class name [cccc]: Vendor Device [vvvv:dddd] (rev rr) (prog-if pp [...])", split by
    # hand (no backtracking pattern over a hostile line)
    parts = f.header.split(None, 1)
    left, sep, rest = (parts[1] if len(parts) > 1 else "").partition(":")
    if sep:
        left = left.strip()
        code = None
        if len(left) >= 6 and left[-6] == "[" and left[-1] == "]" and CODE_RE.fullmatch(left[-5:-1]):
            code, left = left[-5:-1], left[:-6].strip()
        t.class_name = left
        pi = PROGIF_RE.search(rest)
        progif = int(pi["pi"], 16) if pi else 0
        if code:
            t.class_code = (int(code, 16) << 8) | progif
            t.class_from_code = True
        elif t.class_name in CLASS_NAMES:
            t.class_code = (CLASS_NAMES[t.class_name] << 8) | progif
        # the last [vvvv:dddd] is the function's own (a vendor name may hold brackets)
        ids = next(reversed(list(IDS_RE.finditer(rest))), None)
        if ids and code:
            t.vendor, t.device = int(ids["ven"], 16), int(ids["dev"], 16)
    t.detail_lines = len(f.text)
    in_acs = False
    for line in f.text:
        cap = CAP_RE.match(line)
        if cap:
            off, name = int(cap["off"], 16), cap["name"]
            t.caps.append((off, name))
            in_acs = name.startswith("Access Control Services")
            if in_acs:
                t.acs_offset = off
            if name.startswith("Express") and t.port_type is None:
                kind = name.split(")", 1)[1].strip() if ")" in name else name
                for label, ptype in EXPRESS_TYPES:
                    if kind.startswith(label):
                        t.port_type = ptype
                        break
            continue
        if line.startswith("Capabilities:") and "access denied" in line:
            t.denied = True
            continue
        if line.startswith("Kernel driver in use:"):
            t.driver = line.split(":", 1)[1].strip() or None
            continue
        b = BUS_RE.match(line)
        if b:
            t.bus = (int(b["pri"], 16), int(b["sec"], 16), int(b["sub"], 16))
            continue
        if line.startswith("LnkCap:"):
            t.max_speed = _speed(line)
            w = WIDTH_RE.search(line)
            t.max_width = int(w["width"]) if w else None
            p = PORT_RE.search(line)
            t.port_number = int(p["port"]) if p else None
        elif line.startswith("LnkSta:"):
            t.cur_speed = _speed(line)
            w = WIDTH_RE.search(line)
            t.cur_width = int(w["width"]) if w else None
        elif in_acs and line.startswith("ACSCap:"):
            t.acs_cap = _flags(line.split(":", 1)[1])
            e = ECVS_RE.search(line)
            if e:
                t.acs_ecvs = int(e["n"])
        elif in_acs and line.startswith("ACSCtl:"):
            t.acs_ctrl = _flags(line.split(":", 1)[1])
    return t


def _bridge_buses(f: _Func, info: cfg.ConfigInfo | None, t: _Text) -> tuple[int, int, int] | None:
    """(header type, secondary, subordinate) of a PCI-to-PCI or CardBus bridge, else None.

    Both header types keep the secondary and subordinate bus numbers at 0x19 and 0x1a."""
    if info is not None:
        if info.header_type not in (cfg.HEADER_BRIDGE, cfg.HEADER_CARDBUS):
            return None
        sec, sub = f.data[cfg.PCI_SECONDARY_BUS], f.data[cfg.PCI_SUBORDINATE_BUS]
        return (info.header_type, sec, sub)
    if t.bus is None:
        return None
    kind = cfg.HEADER_CARDBUS if (t.class_code or 0) >> 8 == 0x0607 else cfg.HEADER_BRIDGE
    return (kind, t.bus[1], t.bus[2])


def _parents(funcs: list[_Func], bridges: dict[str, tuple[int, int, int] | None],
             warnings: list[str]) -> dict[str, str | None]:
    """Each function's upstream bridge: the bridge whose secondary bus is the function's bus."""
    by_secondary: dict[tuple[int, int], str] = {}
    ranges: list[tuple[int, int, int, str]] = []
    for f in funcs:
        br = bridges[f.bdf]
        if br is None or not br[1]:
            continue
        sec, sub = br[1], br[2] or br[1]
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
                    f"{f.bdf}: no bridge in the dump has bus {f.bus:02x} as its secondary bus; placed below"
                    f" {parent}, whose bus range holds it (a bridge between them is missing from the dump)"
                )
        out[f.bdf] = parent
    return out


def _compare(bdf: str, info: cfg.ConfigInfo, t: _Text, warnings: list[str]) -> None:
    """Warn, naming the field, where the text and the hex of one function disagree."""

    def differ(field: str, text_value: object, hex_value: object) -> None:
        warnings.append(f"{bdf}: {field} in the text ({text_value}) differs from the hex ({hex_value}); hex used")

    if t.vendor is not None and (t.vendor, t.device) != (info.vendor, info.device):
        differ("vendor:device", f"{t.vendor:04x}:{t.device or 0:04x}", f"{info.vendor:04x}:{info.device:04x}")
    if t.class_from_code and t.class_code is not None and t.class_code >> 8 != info.class_code >> 8:
        differ("class", f"{t.class_code >> 8:04x}", f"{info.class_code >> 8:04x}")
    if t.bus is not None and info.header_type in (cfg.HEADER_BRIDGE, cfg.HEADER_CARDBUS):
        if info.secondary_bus is not None and (t.bus[1], t.bus[2]) != (info.secondary_bus, info.subordinate_bus):
            differ("Bus: secondary/subordinate", f"{t.bus[1]:02x}/{t.bus[2]:02x}",
                   f"{info.secondary_bus:02x}/{info.subordinate_bus or 0:02x}")
    p = info.pcie
    if p is not None:
        if t.port_type is not None and t.port_type != p.port_type:
            differ("PCIe port type", cfg.PORT_TYPE_NAMES.get(t.port_type, t.port_type),
                   cfg.PORT_TYPE_NAMES.get(p.port_type, p.port_type))
        if t.port_number is not None and t.port_number != p.port_number:
            differ("LnkCap Port #", t.port_number, p.port_number)
        for field, tv, hv in (("LnkCap speed", t.max_speed, p.max_speed), ("LnkCap width", t.max_width, p.max_width),
                              ("LnkSta speed", t.cur_speed, p.cur_speed), ("LnkSta width", t.cur_width, p.cur_width)):
            if tv is not None and hv is not None and tv != hv:
                differ(field, tv, hv)
    if info.acs is not None and t.acs_ctrl is not None:
        if t.acs_cap is not None and (t.acs_cap & 0x7F) != (info.acs.cap & 0x7F):
            differ("ACSCap", cfg.acs_bits_text(t.acs_cap), cfg.acs_bits_text(info.acs.cap))
        if t.acs_ctrl != (info.acs.ctrl & 0x7F):
            differ("ACSCtl", cfg.acs_bits_text(t.acs_ctrl), cfg.acs_bits_text(info.acs.ctrl))
    elif info.ext_readable and info.acs is None and t.acs_shown:
        differ("Access Control Services capability", "present", "absent")


def _acs_from_text(d: Device, t: _Text | None, root_text: bool) -> tuple[cfg.Acs | None, bool] | None:
    """(acs, acs_known) from the text where the hex did not reach the ACS capability; None keeps the hex's."""
    if d.acs_known or t is None or t.detail_lines == 0:
        return None
    if t.acs_ctrl is not None and t.acs_offset is not None:
        cap = t.acs_cap or 0
        if t.acs_ecvs is not None:
            cap |= ((t.acs_ecvs & 0xFF) << cfg.PCI_ACS_ECVS_SHIFT)
        acs = cfg.Acs(offset=t.acs_offset, cap=cap, ctrl=t.acs_ctrl, egress_vector=())
        # With Egress Control enabled the decision reads the vector, which lspci does not print.
        return acs, not t.acs_ctrl & cfg.PCI_ACS_EC
    if t.acs_shown or t.denied or not root_text:
        return None
    # lspci as root lists every extended capability it reads; none of them is ACS.
    return None, True


def topology_from_dump(text: str, *, name: str, where: str = "lspci dump") -> Topology:
    """The Topology of an ``lspci`` dump (hex and/or ``-vv`` text); SourceError when it holds nothing usable."""
    funcs = parse_dump(text, where=where)
    warnings: list[str] = []
    seen: set[str] = set()
    usable: list[_Func] = []
    infos: dict[str, cfg.ConfigInfo | None] = {}
    texts: dict[str, _Text] = {}
    for f in funcs:
        if f.bdf in seen:
            warnings.append(f"{f.bdf}: listed twice (line {f.line}); second one skipped")
            continue
        seen.add(f.bdf)
        t = parse_text(f)
        info: cfg.ConfigInfo | None = None
        if f.data:
            if len(f.data) < cfg.PCI_STD_HEADER_SIZEOF:
                warnings.append(f"{f.bdf}: only {len(f.data)} bytes of config space (line {f.line}); hex ignored")
            else:
                try:
                    info = cfg.decode(bytes(f.data))
                except ValueError as exc:
                    warnings.append(f"{f.bdf}: {exc}; hex ignored")
        if info is None and t.class_code is None and t.detail_lines == 0:
            warnings.append(f"{f.bdf}: neither config bytes nor a known class (line {f.line}); skipped")
            continue
        if info is not None:
            _compare(f.bdf, info, t, warnings)
        infos[f.bdf] = info
        texts[f.bdf] = t
        usable.append(f)
    if not usable:
        raise SourceError(f"{where}: no PCI function in the dump (make it with lspci -vvv -xxxx, as root)")
    bridges = {f.bdf: _bridge_buses(f, infos[f.bdf], texts[f.bdf]) for f in usable}
    parents = _parents(usable, bridges, warnings)
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
    # lspci lists extended capabilities only when it read them (root); "<access denied>" when not.
    denied = any(t.denied for t in texts.values())
    root_text = not denied and any(t.ext_caps_shown for t in texts.values())
    raws = []
    for f in usable:
        info, t = infos[f.bdf], texts[f.bdf]
        br = bridges[f.bdf]
        raws.append(RawFunction(
            bdf=f.bdf,
            host_bridge=hb[f.bdf],
            parent_bdf=parents[f.bdf],
            config=bytes(f.data) if info is not None else None,
            config_space_size=len(f.data) if full and len(f.data) >= cfg.PCI_CFG_SPACE_SIZE else None,
            vendor=None if info is not None else t.vendor,
            device=None if info is not None else t.device,
            class_code=None if info is not None else t.class_code,
            header_type=None if info is not None else (br[0] if br else cfg.HEADER_NORMAL),
            port_type=None if info is not None else t.port_type,
            max_speed=None if info is not None else t.max_speed,
            max_width=None if info is not None else t.max_width,
            cur_speed=None if info is not None else t.cur_speed,
            cur_width=None if info is not None else t.cur_width,
            driver=t.driver,
        ))
    topo = build_topology(raws, name=name, host_bridges=sorted(set(hb.values())), warnings=warnings,
                          source=f"lspci:{where}", ids=PciIds.find())
    devices = []
    from_text = 0
    for d in topo.devices:
        t = texts[d.bdf]
        change: dict[str, object] = {}
        got = _acs_from_text(d, t, root_text)
        if got is not None:
            change["acs"], change["acs_known"] = got
            from_text += 1
        if d.port_number is None and t.port_number is not None:
            change["port_number"] = t.port_number
        devices.append(dataclasses.replace(d, **change) if change else d)  # type: ignore[arg-type]
    hbs, hb_notes = _host_bridge_devices(topo, tuple(devices))
    notes = ["lspci dump has no CPU information: an AMD Zen CPU (P2P through the host bridge) cannot be"
             " recognised, only the host bridge whitelist is evaluated", *hb_notes]
    if from_text:
        notes.append(f"ACS of {from_text} functions read from the -vv text (ACSCap/ACSCtl lines and the"
                     " extended capabilities lspci listed)")
    unknown = [d for d in devices if not d.acs_known]
    if unknown:
        notes.append(_acs_unknown_note(unknown, len(devices), texts, root_text, denied, full))
    return dataclasses.replace(topo, devices=tuple(devices), host_bridges=hbs,
                               warnings=(*topo.warnings, *notes))


def _acs_unknown_note(unknown: list[Device], total: int, texts: dict[str, _Text], root_text: bool,
                      denied: bool, full: bool) -> str:
    """Why ACS stays unknown, saying "run as root" only when the dump shows it was not made as root."""
    egress = [d.bdf for d in unknown if d.acs is not None and d.acs.ctrl & cfg.PCI_ACS_EC]
    head = f"ACS unknown for {len(unknown)} of {total} functions: "
    if denied or max(d.config_size for d in unknown) <= cfg.PCI_STD_HEADER_SIZEOF and not root_text:
        return head + ("the dump was made without root (lspci shows <access denied> or only 64 bytes);"
                       " run lspci -vvv -xxxx as root")
    parts = []
    if root_text:
        parts.append("the dump was made as root but its hex stops at 256 bytes and the -vv text does not"
                     " show their ACS control (make it with lspci -vvv -xxxx)")
    elif not full:
        parts.append("the hex stops at 256 bytes (lspci -xxx), before the extended config space where ACS"
                     " lives; make it with lspci -vvv -xxxx as root")
    if egress:
        parts.append(f"Egress Control is on at {', '.join(egress)} and lspci does not print the egress vector")
    return head + "; ".join(parts or ["config space incomplete"])


def _host_bridge_devices(topo: Topology, devices: tuple[Device, ...]) -> tuple[tuple[HostBridge, ...], list[str]]:
    """Host bridges whose pci_host_bridge_dev() device the dump cannot show are marked unknown.

    The kernel takes the first device on the root bus (lowest devfn). Only a function at 00.0 is
    certainly that device: without one the dump may be filtered (``lspci -s``), and a text-only dump
    without ``-nn`` shows no IDs for the whitelist.
    """
    by_bdf = {d.bdf: d for d in devices}
    out = []
    notes: list[str] = []
    for hb in topo.host_bridges:
        at_zero = [b for b in hb.root_devices if by_bdf[b].devfn == 0]
        reason = None
        if not at_zero:
            first = f" (the first shown is {hb.root_devices[0]})" if hb.root_devices else ""
            reason = f"the dump shows no function 00.0 on its root bus{first}, so the device" \
                     " pci_host_bridge_dev() picks is not in this input"
        elif by_bdf[at_zero[0]].vendor == 0xFFFF:
            reason = f"{at_zero[0]} has no vendor:device in the dump (make it with lspci -nn or -x)"
        if reason is None:
            out.append(dataclasses.replace(hb, host_dev=at_zero[0]))
            continue
        out.append(dataclasses.replace(hb, host_dev=None, host_bridge_dev_known=False))
        notes.append(f"{hb.name}: {reason}; the host bridge whitelist cannot be evaluated")
    return tuple(out), notes


def read_lspci(path: str | os.PathLike[str]) -> Topology:
    """Read an ``lspci`` dump file (``--lspci FILE``); SourceError with one line on any trouble."""
    p = Path(path)
    data, _ = files.read_capped(p, MAX_DUMP)
    if b"\0" in data:
        raise SourceError(f"{p}: binary data, not an lspci dump")
    return topology_from_dump(data.decode("utf-8-sig", "replace"), name=p.stem, where=str(p))


__all__ = ["parse_dump", "parse_text", "read_lspci", "topology_from_dump"]
