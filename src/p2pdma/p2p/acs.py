"""ACS per-port routing decisions, as drivers/pci/p2pdma.c and drivers/pci/pci.c make them."""

from __future__ import annotations

import errno
from enum import IntEnum

from p2pdma.pci import config as cfg
from p2pdma.pci.topology import Device

EGRESS_PORT_TYPES = (cfg.PCI_EXP_TYPE_ROOT_PORT, cfg.PCI_EXP_TYPE_DOWNSTREAM)


class AcsState(IntEnum):
    """``enum pci_acs_p2pdma_state``: how a peer request entering a port is routed."""

    def __deepcopy__(self, memo: object) -> AcsState:
        return self  # members are constants: copies share them

    DIRECT = 0
    REDIRECT = 1
    NOT_SUPPORTED = 2


def acs_decision(ctrl: int, has_target: bool, egress: int) -> AcsState:
    """PCIe r7.0 table 6-11 for one ingress port. Mirrors pci_acs_p2pdma_decision().

    Egress Control counts only where the target port is known; a set vector bit redirects only
    with RR (else it is an ACS violation), a clear one routes directly unless CR redirects.
    ``egress`` is 1 (bit set), 0 (clear) or a negative errno (vector unreadable).
    """
    if not has_target or not ctrl & cfg.PCI_ACS_EC:
        return AcsState.REDIRECT if ctrl & (cfg.PCI_ACS_RR | cfg.PCI_ACS_CR) else AcsState.DIRECT
    if egress < 0:
        return AcsState.NOT_SUPPORTED
    if egress:
        return AcsState.REDIRECT if ctrl & cfg.PCI_ACS_RR else AcsState.NOT_SUPPORTED
    return AcsState.REDIRECT if ctrl & cfg.PCI_ACS_CR else AcsState.DIRECT


def egress_port_valid(acs_caps: int, port: int) -> bool:
    """Whether the Egress Control Vector addresses ``port``. Mirrors pci_acs_egress_port_valid()."""
    return port < cfg.egress_vector_bits(acs_caps)


def egress_ctrl_set(pdev: Device, target: Device) -> int:
    """The target port's bit in ``pdev``'s Egress Control Vector. Mirrors pci_acs_egress_ctrl_set().

    1 or 0 for the bit; -EOPNOTSUPP when either port cannot use a vector (no EC capability, not a
    Root Port or Switch Downstream Port); -ERANGE when the target's Link Capabilities Port Number
    lies beyond the vector size; -EIO when the vector could not be read.
    """
    acs = pdev.acs
    if acs is None or not acs.cap & cfg.PCI_ACS_EC:
        return -errno.EOPNOTSUPP
    if pdev.port_type not in EGRESS_PORT_TYPES or pdev.port_type_inferred:
        return -errno.EOPNOTSUPP
    if target.port_type not in EGRESS_PORT_TYPES or target.port_type_inferred:
        return -errno.EOPNOTSUPP
    if target.port_number is None:
        return -errno.EIO
    port = target.port_number
    if not egress_port_valid(acs.cap, port):
        return -errno.ERANGE
    dword = port // 32
    if dword >= len(acs.egress_vector):
        return -errno.EIO
    return (acs.egress_vector[dword] >> (port % 32)) & 1


def acs_state(pdev: Device, target: Device | None) -> AcsState:
    """How a peer request entering ``pdev`` routes toward ``target``. Mirrors pci_acs_p2pdma_state().

    A port whose ACS is unknown (config unreadable) is taken as having no ACS capability; the
    caller records that the answer is uncertain.
    """
    acs = pdev.acs
    if acs is None:
        return AcsState.DIRECT
    egress = 0
    if target is not None and acs.ctrl & cfg.PCI_ACS_EC:
        egress = egress_ctrl_set(pdev, target)
    return acs_decision(acs.ctrl, target is not None, egress)


def has_acs_redir(pdev: Device) -> bool:
    """Classic kernels: any of RR, CR, EC set in ACS control redirects. Mirrors
    pci_bridge_has_acs_redir() in drivers/pci/p2pdma.c through 6.x."""
    acs = pdev.acs
    return acs is not None and bool(acs.ctrl & (cfg.PCI_ACS_RR | cfg.PCI_ACS_CR | cfg.PCI_ACS_EC))
