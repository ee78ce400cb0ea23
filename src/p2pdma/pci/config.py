"""PCI configuration space: decode the bytes the kernel reads (header, capabilities, PCIe, ACS), and
build such bytes for synthetic machines, so that both real and generated trees take the same path.

Offsets and bit names follow ``include/uapi/linux/pci_regs.h``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Type 0/1 header
PCI_VENDOR_ID = 0x00
PCI_DEVICE_ID = 0x02
PCI_COMMAND = 0x04
PCI_STATUS = 0x06
PCI_STATUS_CAP_LIST = 0x10
PCI_CLASS_REVISION = 0x08
PCI_HEADER_TYPE = 0x0E
PCI_HEADER_TYPE_MASK = 0x7F
PCI_HEADER_TYPE_MFD = 0x80
PCI_PRIMARY_BUS = 0x18
PCI_SECONDARY_BUS = 0x19
PCI_SUBORDINATE_BUS = 0x1A
PCI_CAPABILITY_LIST = 0x34
PCI_STD_HEADER_SIZEOF = 64
PCI_CFG_SPACE_SIZE = 256
PCI_CFG_SPACE_EXP_SIZE = 4096

HEADER_NORMAL = 0
HEADER_BRIDGE = 1
HEADER_CARDBUS = 2

# Capabilities
PCI_CAP_ID_EXP = 0x10
PCI_EXP_FLAGS = 0x02
PCI_EXP_FLAGS_TYPE_SHIFT = 4
PCI_EXP_LNKCAP = 0x0C
PCI_EXP_LNKCAP_SLS = 0x0000000F
PCI_EXP_LNKCAP_MLW = 0x000003F0
PCI_EXP_LNKCAP_PN = 0xFF000000
PCI_EXP_LNKSTA = 0x12

# PCIe device/port types (PCI_EXP_TYPE_*)
PCI_EXP_TYPE_ENDPOINT = 0x0
PCI_EXP_TYPE_LEG_END = 0x1
PCI_EXP_TYPE_ROOT_PORT = 0x4
PCI_EXP_TYPE_UPSTREAM = 0x5
PCI_EXP_TYPE_DOWNSTREAM = 0x6
PCI_EXP_TYPE_PCI_BRIDGE = 0x7
PCI_EXP_TYPE_PCIE_BRIDGE = 0x8
PCI_EXP_TYPE_RC_END = 0x9
PCI_EXP_TYPE_RC_EC = 0xA

PORT_TYPE_NAMES = {
    PCI_EXP_TYPE_ENDPOINT: "endpoint",
    PCI_EXP_TYPE_LEG_END: "legacy-endpoint",
    PCI_EXP_TYPE_ROOT_PORT: "root-port",
    PCI_EXP_TYPE_UPSTREAM: "switch-upstream",
    PCI_EXP_TYPE_DOWNSTREAM: "switch-downstream",
    PCI_EXP_TYPE_PCI_BRIDGE: "pcie-to-pci",
    PCI_EXP_TYPE_PCIE_BRIDGE: "pci-to-pcie",
    PCI_EXP_TYPE_RC_END: "rc-endpoint",
    PCI_EXP_TYPE_RC_EC: "rc-event-collector",
}
PORT_TYPE_BY_NAME = {v: k for k, v in PORT_TYPE_NAMES.items()}

# Link speeds, as PCI_EXP_LNKCAP_SLS / LNKSTA_CLS encode them (GT/s)
LINK_SPEEDS = {1: 2.5, 2: 5.0, 3: 8.0, 4: 16.0, 5: 32.0, 6: 64.0, 7: 128.0}
LINK_SPEED_CODES = {v: k for k, v in LINK_SPEEDS.items()}

# Extended capabilities
PCI_EXT_CAP_START = 0x100
PCI_EXT_CAP_ID_ACS = 0x0D
PCI_EXT_CAP_ID_SRIOV = 0x10
PCI_ACS_CAP = 0x04
PCI_ACS_CTRL = 0x06
PCI_ACS_EGRESS_CTL_V = 0x08

# ACS capability and control bits (the same positions in both registers)
PCI_ACS_SV = 0x0001
PCI_ACS_TB = 0x0002
PCI_ACS_RR = 0x0004
PCI_ACS_CR = 0x0008
PCI_ACS_UF = 0x0010
PCI_ACS_EC = 0x0020
PCI_ACS_DT = 0x0040
PCI_ACS_ECVS_SHIFT = 8
ACS_BIT_NAMES = (
    (PCI_ACS_SV, "SV"),
    (PCI_ACS_TB, "TB"),
    (PCI_ACS_RR, "RR"),
    (PCI_ACS_CR, "CR"),
    (PCI_ACS_UF, "UF"),
    (PCI_ACS_EC, "EC"),
    (PCI_ACS_DT, "DT"),
)


def acs_bits_text(value: int) -> str:
    """Names of the set ACS bits, e.g. ``RR,CR``; ``-`` when none is set."""
    names = [name for bit, name in ACS_BIT_NAMES if value & bit]
    return ",".join(names) if names else "-"


def egress_vector_bits(acs_cap: int) -> int:
    """Egress Control Vector size in bits from the ACS capability register (0 encodes 256)."""
    size = (acs_cap >> PCI_ACS_ECVS_SHIFT) & 0xFF
    return 256 if size == 0 else size


@dataclass(frozen=True, slots=True)
class Acs:
    """The ACS extended capability: its offset, capability and control registers, egress vector.

    ``egress_vector`` holds the vector DWORDs that config space let us read (it may be shorter
    than the vector size when the file was truncated: reads past it fail as in the kernel).
    """

    offset: int
    cap: int
    ctrl: int
    egress_vector: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class PcieCap:
    """The PCI Express capability fields the verdict and the report use."""

    offset: int
    port_type: int
    port_number: int
    max_speed: float | None
    max_width: int
    cur_speed: float | None
    cur_width: int


@dataclass(frozen=True, slots=True)
class ConfigInfo:
    """What one function's config space says; ``*_readable`` say how much of it we could see."""

    size: int
    vendor: int
    device: int
    class_code: int
    revision: int
    header_type: int
    multifunction: bool
    secondary_bus: int | None
    subordinate_bus: int | None
    caps: tuple[int, ...]
    ext_caps: tuple[int, ...]
    pcie: PcieCap | None
    acs: Acs | None
    caps_readable: bool
    ext_readable: bool


def _u8(buf: bytes, off: int) -> int:
    return buf[off]


_U16 = struct.Struct("<H").unpack_from
_U32 = struct.Struct("<I").unpack_from
_HEAD = struct.Struct("<HHHHI").unpack_from  # vendor, device, command, status, class/revision


def _u16(buf: bytes, off: int) -> int:
    return int(_U16(buf, off)[0])


def _u32(buf: bytes, off: int) -> int:
    return int(_U32(buf, off)[0])


def decode(buf: bytes) -> ConfigInfo:
    """Decode a function's config space the way the PCI core walks it (header, cap list, ext caps).

    Mirrors the capability walks of ``pci_find_capability()`` and ``pci_find_ext_capability()`` in
    drivers/pci/pci.c, including their loop bounds, so a corrupt list cannot hang us.
    Raises ``ValueError`` when even the 64-byte header is missing.
    """
    if len(buf) < PCI_STD_HEADER_SIZEOF:
        raise ValueError(f"config space is {len(buf)} bytes, the header needs 64")
    size = len(buf)
    vendor, device, _, status, rev_class = _HEAD(buf, PCI_VENDOR_ID)
    hdr = buf[PCI_HEADER_TYPE]
    header_type = hdr & PCI_HEADER_TYPE_MASK
    secondary = subordinate = None
    if header_type == HEADER_BRIDGE:
        secondary = _u8(buf, PCI_SECONDARY_BUS)
        subordinate = _u8(buf, PCI_SUBORDINATE_BUS)

    caps: list[int] = []
    pcie: PcieCap | None = None
    caps_readable = size >= PCI_CFG_SPACE_SIZE
    if status & PCI_STATUS_CAP_LIST:
        pos = buf[PCI_CAPABILITY_LIST]
        ttl = 48  # PCI_FIND_CAP_TTL
        while ttl and pos >= 0x40:
            pos &= ~3
            if pos + 2 > size:
                caps_readable = False
                break
            cap_id = buf[pos]
            if cap_id == 0xFF:
                break
            caps.append(cap_id)
            if cap_id == PCI_CAP_ID_EXP and pcie is None and pos + 0x14 <= size:
                flags = _u16(buf, pos + PCI_EXP_FLAGS)
                lnkcap = _u32(buf, pos + PCI_EXP_LNKCAP)
                lnksta = _u16(buf, pos + PCI_EXP_LNKSTA)
                pcie = PcieCap(
                    offset=pos,
                    port_type=(flags >> PCI_EXP_FLAGS_TYPE_SHIFT) & 0xF,
                    port_number=(lnkcap & PCI_EXP_LNKCAP_PN) >> 24,
                    max_speed=LINK_SPEEDS.get(lnkcap & PCI_EXP_LNKCAP_SLS),
                    max_width=(lnkcap & PCI_EXP_LNKCAP_MLW) >> 4,
                    cur_speed=LINK_SPEEDS.get(lnksta & 0xF),
                    cur_width=(lnksta >> 4) & 0x3F,
                )
            pos = buf[pos + 1]
            ttl -= 1

    ext_caps: list[int] = []
    acs: Acs | None = None
    ext_readable = size >= PCI_CFG_SPACE_EXP_SIZE
    if ext_readable:
        pos = PCI_EXT_CAP_START
        ttl = (PCI_CFG_SPACE_EXP_SIZE - PCI_CFG_SPACE_SIZE) // 8
        while ttl > 0 and pos >= PCI_EXT_CAP_START and pos + 4 <= size:
            header = _U32(buf, pos)[0]
            if header == 0 or header == 0xFFFFFFFF:
                break
            cap_id = header & 0xFFFF
            ext_caps.append(cap_id)
            if cap_id == PCI_EXT_CAP_ID_ACS and acs is None and pos + 8 <= size:
                acs_cap = _u16(buf, pos + PCI_ACS_CAP)
                ctrl = _u16(buf, pos + PCI_ACS_CTRL)
                vec: list[int] = []
                if acs_cap & PCI_ACS_EC:
                    ndw = (egress_vector_bits(acs_cap) + 31) // 32
                    for i in range(ndw):
                        off = pos + PCI_ACS_EGRESS_CTL_V + 4 * i
                        if off + 4 > size:
                            break
                        vec.append(_u32(buf, off))
                acs = Acs(offset=pos, cap=acs_cap, ctrl=ctrl, egress_vector=tuple(vec))
            pos = (header >> 20) & 0xFFC
            ttl -= 1

    return ConfigInfo(
        size=size,
        vendor=vendor,
        device=device,
        class_code=rev_class >> 8,
        revision=rev_class & 0xFF,
        header_type=header_type,
        multifunction=bool(hdr & PCI_HEADER_TYPE_MFD),
        secondary_bus=secondary,
        subordinate_bus=subordinate,
        caps=tuple(caps),
        ext_caps=tuple(ext_caps),
        pcie=pcie,
        acs=acs,
        caps_readable=caps_readable,
        ext_readable=ext_readable,
    )


def build(
    *,
    vendor: int,
    device: int,
    class_code: int,
    header_type: int = HEADER_NORMAL,
    multifunction: bool = False,
    secondary_bus: int = 0,
    subordinate_bus: int = 0,
    port_type: int | None = None,
    port_number: int = 0,
    link_speed: float | None = None,
    link_width: int = 0,
    acs_cap: int | None = None,
    acs_ctrl: int = 0,
    egress_vector: tuple[int, ...] = (),
    size: int = PCI_CFG_SPACE_EXP_SIZE,
) -> bytes:
    """Synthesize config space bytes for a function, laid out as real hardware lays it out.

    The PCIe capability sits at 0x40, ACS at 0x100. ``size`` truncates the result the way sysfs
    truncates ``config`` for unprivileged readers (64) or conventional devices (256).
    """
    buf = bytearray(PCI_CFG_SPACE_EXP_SIZE)
    struct.pack_into("<HH", buf, 0, vendor, device)
    struct.pack_into("<I", buf, PCI_CLASS_REVISION, (class_code << 8) | 0x01)
    buf[PCI_HEADER_TYPE] = header_type | (PCI_HEADER_TYPE_MFD if multifunction else 0)
    if header_type == HEADER_BRIDGE:
        buf[PCI_SECONDARY_BUS] = secondary_bus
        buf[PCI_SUBORDINATE_BUS] = subordinate_bus
    if port_type is not None:
        struct.pack_into("<H", buf, PCI_STATUS, PCI_STATUS_CAP_LIST)
        buf[PCI_CAPABILITY_LIST] = 0x40
        buf[0x40] = PCI_CAP_ID_EXP
        buf[0x41] = 0
        struct.pack_into("<H", buf, 0x40 + PCI_EXP_FLAGS, (port_type << 4) | 0x2)
        code = LINK_SPEED_CODES.get(link_speed, 0) if link_speed is not None else 0
        lnkcap = (port_number << 24) | (link_width << 4) | code
        struct.pack_into("<I", buf, 0x40 + PCI_EXP_LNKCAP, lnkcap)
        struct.pack_into("<H", buf, 0x40 + PCI_EXP_LNKSTA, (link_width << 4) | code)
    if acs_cap is not None:
        struct.pack_into("<I", buf, 0x100, PCI_EXT_CAP_ID_ACS | (1 << 16))
        struct.pack_into("<HH", buf, 0x100 + PCI_ACS_CAP, acs_cap, acs_ctrl)
        for i, dw in enumerate(egress_vector):
            struct.pack_into("<I", buf, 0x100 + PCI_ACS_EGRESS_CTL_V + 4 * i, dw)
    return bytes(buf[:size])
