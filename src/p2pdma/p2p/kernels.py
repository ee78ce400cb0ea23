"""Kernel profiles: the P2P rules of real kernel trees, as data (no numpy, cheap to import for ``--help``).

Each profile records what one drivers/pci/p2pdma.c decides: the ACS rule, the host-bridge whitelist rows,
the pci_host_bridge_dev() and cpu_supports_p2pdma() rules, and the exact log strings, plus the tree read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PCI_VENDOR_ID_INTEL = 0x8086
PCI_VENDOR_ID_AMD = 0x1022
PCI_VENDOR_ID_GOOGLE = 0x1AE0
PCI_VENDOR_ID_NVIDIA = 0x10DE
PCI_VENDOR_ID_ZHAOXIN = 0x1D17
PCI_ANY_ID = -1
REQ_SAME_HOST_BRIDGE = 1 << 0

ACS_REDIR_ANY_PORT = "pci_bridge_has_acs_redir: RR, CR or EC on any port of the path"
HOST_BRIDGE_DEV_RULE = "pci_host_bridge_dev: first device on the root bus if devfn 00.0 or a Root Port"
CPU_RULE = "cpu_supports_p2pdma: x86 AMD family >= 0x17"
ACS_LIST_BUF = 128  # char buf[128] behind the pci=disable_acs_redir= list (seq_buf), 5.14 on
PAGE_SIZE_ACS_LIST_BUF = 4096  # before 5.14: seq_buf on kmalloc(PAGE_SIZE) in upstream_bridge_distance_warn()
HOST_BRIDGE_DEV_RULE_OLD = "pci_host_bridge_dev: first device on the root bus only if it is devfn 00.0"
NO_CPU_RULE = "no cpu_supports_p2pdma(): AMD Zen passes only through its 1022:1450 whitelist row"


@dataclass(frozen=True, slots=True)
class WhitelistEntry:
    """One row of ``pci_p2pdma_whitelist[]``."""

    vendor: int
    device: int
    flags: int
    comment: str


@dataclass(frozen=True, slots=True)
class KernelProfile:
    """The P2P rules of one kernel tree."""

    name: str
    title: str
    acs_rule: str
    whitelist: tuple[WhitelistEntry, ...]
    source: str
    # Host bridge "not in whitelist" warning on every host-bridge fallback; False in every tree read
    # (6.1, 7.2, the PCI tree at cd2698d76c31): host_bridge_whitelist() gets warn = acs_redirects.
    warn_whitelist_always: bool = False
    acs_list_buf: int = ACS_LIST_BUF
    host_bridge_dev_rule: str = HOST_BRIDGE_DEV_RULE
    cpu_rule: str = CPU_RULE
    # pci_host_bridge_dev() takes a Root Port at any devfn (5.19 on, 1af7c26c59eb); before, devfn 00.0 only.
    host_bridge_root_port: bool = True
    # cpu_supports_p2pdma() exists (x86 AMD family >= 0x17 passes); absent in the 5.4 tree read.
    cpu_amd_zen: bool = True
    # "Host bridge not in P2PDMA whitelist" exists at all (5.14 on); 5.4 and 5.10 never print it.
    whitelist_warn: bool = True
    log_acs: str = "pci {client}: ACS redirect is set between the client and provider ({provider})"
    log_acs_param: str = (
        "pci {client}: to disable ACS redirect for this path, add the kernel parameter: pci=disable_acs_redir={list}"
    )
    log_no_path: str = (
        "pci {client}: cannot be used for peer-to-peer DMA as the client and provider ({provider})"
        " do not share an upstream bridge or whitelisted host bridge"
    )
    log_whitelist: str = "pci {root}: Host bridge not in P2PDMA whitelist: {vendor:04x}:{device:04x}"

    def acs_list(self, bdfs: list[str]) -> str:
        """The ``pci=disable_acs_redir=`` list as the kernel prints it: "bdf;" entries in a seq_buf of
        ``acs_list_buf`` bytes (cut at size - 1 on overflow), the final semicolon dropped."""
        full = "".join(b + ";" for b in bdfs)
        if len(full) > self.acs_list_buf - 1:
            return full[: self.acs_list_buf - 1]
        return full[:-1]


def _intel(device: int, flags: int, comment: str) -> WhitelistEntry:
    return WhitelistEntry(PCI_VENDOR_ID_INTEL, device, flags, comment)


_WL_INTEL_E5: tuple[WhitelistEntry, ...] = (
    _intel(0x3C00, REQ_SAME_HOST_BRIDGE, "Intel Xeon E5/Core i7"),
    _intel(0x3C01, REQ_SAME_HOST_BRIDGE, "Intel Xeon E5/Core i7"),
    _intel(0x2F00, REQ_SAME_HOST_BRIDGE, "Intel Xeon E7 v3/Xeon E5 v3"),
    _intel(0x2F01, REQ_SAME_HOST_BRIDGE, "Intel Xeon E7 v3/Xeon E5 v3"),
)
# 5.4: the AMD Zen root complex is a table row (no cpu_supports_p2pdma() yet), then the 4 Intel rows.
_WL_54: tuple[WhitelistEntry, ...] = (
    WhitelistEntry(PCI_VENDOR_ID_AMD, 0x1450, 0, "AMD Zen root complex"),
) + _WL_INTEL_E5
# 5.10 and 5.15: the AMD row is gone (cpu_supports_p2pdma()); Skylake-E root ports and root complex added.
_WL_510: tuple[WhitelistEntry, ...] = _WL_INTEL_E5 + (
    _intel(0x2030, 0, "Intel Skylake-E"),
    _intel(0x2031, 0, "Intel Skylake-E"),
    _intel(0x2032, 0, "Intel Skylake-E"),
    _intel(0x2033, 0, "Intel Skylake-E"),
    _intel(0x2020, 0, "Intel Skylake-E"),
)
# 0x09a2 (3rd Gen Xeon Scalable) from 5.18 (feaea1fe8b36); 6.1.176 and 6.12.117 have exactly these 10 rows.
_WL_61: tuple[WhitelistEntry, ...] = _WL_510 + (_intel(0x09A2, 0, "Intel Ice Lake-SP"),)
_WL_72: tuple[WhitelistEntry, ...] = _WL_61 + (
    _intel(0x0B25, 0, "Intel DSA (Sapphire Rapids)"),
    _intel(0x0CFE, 0, "Intel IAX (Sapphire Rapids)"),
    _intel(0x11FB, 0, "Intel DSA (Granite Rapids-D)"),
    _intel(0x1212, 0, "Intel DSA (Diamond Rapids)"),
    _intel(0x1216, 0, "Intel IAA (Diamond Rapids)"),
    _intel(0x4940, 0, "Intel QAT 4xxx"),
    _intel(0x4942, 0, "Intel QAT 401xx"),
    _intel(0x4944, 0, "Intel QAT 402xx"),
    _intel(0x4946, 0, "Intel QAT 420xx"),
    _intel(0x4948, 0, "Intel QAT 6xxx"),
    WhitelistEntry(PCI_VENDOR_ID_GOOGLE, PCI_ANY_ID, 0, "Google SoCs"),
)
# 7.3.4 adds the NVIDIA CPU rows ("Nvidia CPUs"), nothing else.
_WL_73: tuple[WhitelistEntry, ...] = _WL_72 + (
    WhitelistEntry(PCI_VENDOR_ID_NVIDIA, 0x2F95, 0, "NVIDIA Grace"),
    WhitelistEntry(PCI_VENDOR_ID_NVIDIA, 0x2F96, 0, "NVIDIA Grace"),
    WhitelistEntry(PCI_VENDOR_ID_NVIDIA, 0x2F97, 0, "NVIDIA Grace"),
    WhitelistEntry(PCI_VENDOR_ID_NVIDIA, 0x2F98, 0, "NVIDIA Grace"),
)
_WL_PCI_NEXT: tuple[WhitelistEntry, ...] = _WL_73 + (
    WhitelistEntry(PCI_VENDOR_ID_ZHAOXIN, 0x1003, REQ_SAME_HOST_BRIDGE, "Zhaoxin"),
    WhitelistEntry(PCI_VENDOR_ID_ZHAOXIN, 0x1005, REQ_SAME_HOST_BRIDGE, "Zhaoxin"),
    WhitelistEntry(PCI_VENDOR_ID_ZHAOXIN, 0x1006, REQ_SAME_HOST_BRIDGE, "Zhaoxin"),
    WhitelistEntry(PCI_VENDOR_ID_ZHAOXIN, 0x1007, REQ_SAME_HOST_BRIDGE, "Zhaoxin"),
    WhitelistEntry(PCI_VENDOR_ID_ZHAOXIN, 0x1008, 0, "Zhaoxin"),
)

PROFILES: dict[str, KernelProfile] = {
    "5.4": KernelProfile(
        "5.4", "Linux 5.4", ACS_REDIR_ANY_PORT, _WL_54,
        "CodeLinaro-mirror/qsdk_oss_kernel_linux-ipq-5.4 at 7744840b595e (a 5.4 vendor tree),"
        " drivers/pci/p2pdma.c: upstream_bridge_distance(); no cpu_supports_p2pdma()",
        acs_list_buf=PAGE_SIZE_ACS_LIST_BUF, host_bridge_dev_rule=HOST_BRIDGE_DEV_RULE_OLD, cpu_rule=NO_CPU_RULE,
        host_bridge_root_port=False, cpu_amd_zen=False, whitelist_warn=False,
    ),
    "5.10": KernelProfile(
        "5.10", "Linux 5.10", ACS_REDIR_ANY_PORT, _WL_510,
        "Debian linux-source-5.10 5.10.223-1 (bullseye), drivers/pci/p2pdma.c: upstream_bridge_distance()",
        acs_list_buf=PAGE_SIZE_ACS_LIST_BUF, host_bridge_dev_rule=HOST_BRIDGE_DEV_RULE_OLD,
        host_bridge_root_port=False, whitelist_warn=False,
    ),
    "5.15": KernelProfile(
        "5.15", "Linux 5.15", ACS_REDIR_ANY_PORT, _WL_510,
        "xzhan34/linux-intel-lts2021 at a745a76eadab (Intel's 5.15 LTS tree), drivers/pci/p2pdma.c:"
        " calc_map_type_and_dist(); that tree also carries Intel's backport of the 0x09a2 row"
        " (\"Intel Whitley\"), which mainline took for 5.18 (feaea1fe8b36), so it is left out here",
        host_bridge_dev_rule=HOST_BRIDGE_DEV_RULE_OLD, host_bridge_root_port=False,
    ),
    "6.1": KernelProfile(
        "6.1", "Linux 6.1", ACS_REDIR_ANY_PORT, _WL_61,
        "Debian linux-source-6.1 6.1.176-1 (bookworm), drivers/pci/p2pdma.c; Debian linux-source-6.12"
        " 6.12.117-1 (trixie) decides identically (same table, same code but for comments and GFP flags)",
    ),
    "7.2": KernelProfile(
        "7.2", "Linux 7.2", ACS_REDIR_ANY_PORT, _WL_72,
        "Debian linux-source-7.2 7.2.13-1 (unstable), drivers/pci/p2pdma.c",
    ),
    "7.3": KernelProfile(
        "7.3", "Linux 7.3", ACS_REDIR_ANY_PORT, _WL_73,
        "Debian linux-source-7.3 7.3.4-1~bpo13+1 (trixie-backports), drivers/pci/p2pdma.c",
    ),
    "pci-next": KernelProfile(
        "pci-next", "PCI tree p2pdma branch", ACS_REDIR_ANY_PORT, _WL_PCI_NEXT,
        "PCI tree (kernelorg-mirror/linux_kernel_git_pci_pci) at cd2698d76c31, drivers/pci/p2pdma.c",
    ),
}
NEWEST_MAINLINE = "7.3"
ALIASES = ("classic", "latest")
AUTO = "auto"
NEWEST_READ = "7.3"
# The profile in force from each release on (first release of each range). Releases whose tree was
# read, or that lie between two read trees that decide identically (6.1.176 and 6.12.117), carry no
# "not read" note; the others get the rules of the next tree read, said so.
_RANGES: tuple[tuple[tuple[int, int], str], ...] = (
    ((5, 4), "5.4"), ((5, 5), "5.10"), ((5, 11), "5.15"), ((5, 16), "6.1"), ((6, 13), "7.2"), ((7, 3), "7.3"),
)
_READ = {(5, 4), (5, 10), (5, 15), (7, 2), (7, 3)} | {(6, m) for m in range(1, 13)}
_LAST = (7, 3)
KERNEL_CHOICES = (AUTO, *PROFILES, *ALIASES)

_REL = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?(.*)$")


def get_profile(name: str) -> KernelProfile:
    """The profile named ``name`` (aliases resolve to the newest mainline profile)."""
    if name in ALIASES:
        name = NEWEST_MAINLINE
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown kernel profile {name!r} (known: {', '.join(PROFILES)})") from None


def _for_release(release: str, what: str) -> tuple[str, list[str]] | None:
    m = _REL.match(release.strip())
    if not m:
        return None
    major, minor = int(m.group(1)), int(m.group(2))
    notes: list[str] = []
    if m.group(4):
        notes.append(
            f"{what} {release.strip()}: rules of mainline {major}.{minor}; distribution backports are not modelled"
        )
    if (major, minor) < _RANGES[0][0]:
        notes.append(f"kernel {major}.{minor} is outside the modelled 5.4 .. 7.3: using {NEWEST_MAINLINE}")
        return NEWEST_MAINLINE, notes
    if (major, minor) > _LAST:
        notes.append(
            f"kernel {major}.{minor} is newer than the newest tree read ({NEWEST_READ}): using {NEWEST_READ}"
        )
        return NEWEST_READ, notes
    prof = _RANGES[0][1]
    for start, name in _RANGES:
        if (major, minor) >= start:
            prof = name
    if (major, minor) not in _READ:
        notes.append(f"kernel {major}.{minor}: its tree was not read; the rules of {prof} (next tree read) are used")
    return prof, notes


def resolve_kernel(name: str | None, release: str | None) -> tuple[str, str, list[str]]:
    """``--kernel`` value and the machine's release -> (profile name, kernel_source, notes).

    ``auto``/None follow ``release`` (``uname -r`` or a captured osrelease); a profile name is itself;
    ``classic``/``latest`` are aliases of the newest mainline profile; ``X.Y[.Z]`` picks the profile in
    force at that release. Raises ValueError for anything else.
    """
    if name is None or name == AUTO:
        if release:
            got = _for_release(release, "osrelease")
            if got is not None:
                return got[0], f"osrelease {release.strip()}", got[1]
            return NEWEST_MAINLINE, f"osrelease {release.strip()}", [
                f"kernel release {release.strip()!r} not understood: using the newest mainline"
                f" profile {NEWEST_MAINLINE}"
            ]
        return NEWEST_MAINLINE, "default", [
            f"this input carries no kernel release: using the newest mainline profile {NEWEST_MAINLINE}"
        ]
    if name in PROFILES:
        return name, "option", []
    if name in ALIASES:
        return NEWEST_MAINLINE, "option", [
            f"--kernel {name} is an alias of the newest mainline profile {NEWEST_MAINLINE}"
        ]
    m = _REL.match(name)
    got = _for_release(name, "release") if m is not None and not m.group(4) else None
    if got is None:
        raise ValueError(
            f"unknown kernel {name!r}: use auto, {', '.join(PROFILES)}, classic, latest or a release X.Y[.Z]"
        )
    return got[0], f"release {name}", got[1]
