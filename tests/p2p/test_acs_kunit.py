"""The KUnit suite ``pci_acs`` of the posted ACS series (table 6-11 decision, egress vector size rule,
vector lookup by the target's port number), case for case, against acs.py's decoder.

No tree read for a kept profile has this suite (neither 6.1.176 nor 7.2.13 has drivers/pci/tests, and
their p2pdma.c uses pci_bridge_has_acs_redir()): no profile decides with acs_decision(). These cases stay
as decoder tests of the ACS capability fields only, for a future ``acs-tlp-v8`` proposal profile."""

from __future__ import annotations

import errno

import pytest

from p2pdma.p2p.acs import AcsState, acs_decision, egress_ctrl_set, egress_port_valid
from p2pdma.pci import config as cfg
from p2pdma.pci.topology import Device, RawFunction, build_topology

RR, CR, EC = cfg.PCI_ACS_RR, cfg.PCI_ACS_CR, cfg.PCI_ACS_EC
D, R, N = AcsState.DIRECT, AcsState.REDIRECT, AcsState.NOT_SUPPORTED

DECISION_CASES = [
    ("no_target/none", 0, False, 0, D),
    ("no_target/rr", RR, False, 0, R),
    ("no_target/cr", CR, False, 0, R),
    ("no_target/ec_only", EC, False, 0, D),
    ("ec_clear/none", 0, True, 0, D),
    ("ec_clear/rr", RR, True, 0, R),
    ("ec_clear/cr", CR, True, 0, R),
    ("ec_clear/rr_cr", RR | CR, True, 0, R),
    ("ec/eopnotsupp", EC | RR, True, -errno.EOPNOTSUPP, N),
    ("ec/erange", EC | CR, True, -errno.ERANGE, N),
    ("ec/vec_set/none", EC, True, 1, N),
    ("ec/vec_set/cr", EC | CR, True, 1, N),
    ("ec/vec_set/rr", EC | RR, True, 1, R),
    ("ec/vec_set/rr_cr", EC | RR | CR, True, 1, R),
    ("ec/vec_clear/none", EC, True, 0, D),
    ("ec/vec_clear/rr", EC | RR, True, 0, D),
    ("ec/vec_clear/cr", EC | CR, True, 0, R),
    ("ec/vec_clear/rr_cr", EC | RR | CR, True, 0, R),
]


@pytest.mark.parametrize(("desc", "ctrl", "has_target", "egress", "expect"), DECISION_CASES)
def test_decision_table(desc: str, ctrl: int, has_target: bool, egress: int, expect: AcsState) -> None:
    assert acs_decision(ctrl, has_target, egress) == expect, desc


EGRESS_VALID_CASES = [
    ("size0/port0", 0x0000, 0, True),
    ("size0/port255", 0x0000, 255, True),
    ("size1/port0", 0x0100, 0, True),
    ("size1/port1", 0x0100, 1, False),
    ("size8/port7", 0x0800, 7, True),
    ("size8/port8", 0x0800, 8, False),
    ("size255/port254", 0xFF00, 254, True),
    ("size255/port255", 0xFF00, 255, False),
]


@pytest.mark.parametrize(("desc", "caps", "port", "expect"), EGRESS_VALID_CASES)
def test_egress_port_valid(desc: str, caps: int, port: int, expect: bool) -> None:
    assert egress_port_valid(caps, port) is expect, desc


DOWNSTREAM = cfg.PCI_EXP_TYPE_DOWNSTREAM
ENDPOINT = cfg.PCI_EXP_TYPE_ENDPOINT
ROOT_PORT = cfg.PCI_EXP_TYPE_ROOT_PORT
PCIE_BRIDGE = cfg.PCI_EXP_TYPE_PCIE_BRIDGE


def _pair(
    acs_caps: int,
    pdev_type: int,
    target_type: int,
    target_port: int,
    vector: tuple[int, ...] = (0,) * 8,
) -> tuple[Device, Device]:
    """pdev (with the ACS capability and vector) and target (with LNKCAP port number), decoded
    from config-space bytes like the KUnit fake pci_ops serves them."""
    pdev_cfg = cfg.build(
        vendor=0x8086, device=0x1, class_code=0x060400, header_type=cfg.HEADER_BRIDGE,
        port_type=pdev_type, acs_cap=acs_caps, acs_ctrl=EC, egress_vector=vector,
    )
    target_cfg = cfg.build(
        vendor=0x8086, device=0x2, class_code=0x060400, header_type=cfg.HEADER_BRIDGE,
        port_type=target_type, port_number=target_port,
    )
    topo = build_topology(
        [
            RawFunction(bdf="0000:00:00.0", host_bridge="pci0000:00", config=pdev_cfg),
            RawFunction(bdf="0000:00:01.0", host_bridge="pci0000:00", config=target_cfg),
        ],
        name="kunit",
    )
    return topo["0000:00:00.0"], topo["0000:00:01.0"]


def _vec(**bits: int) -> tuple[int, ...]:
    v = [0] * 8
    for _, port in bits.items():
        v[port // 32] |= 1 << (port % 32)
    return tuple(v)


def test_egress_vector_bit_set() -> None:
    p, t = _pair(EC | (32 << 8), DOWNSTREAM, DOWNSTREAM, 5, _vec(a=5))
    assert egress_ctrl_set(p, t) == 1


def test_egress_vector_bit_clear() -> None:
    p, t = _pair(EC | (32 << 8), DOWNSTREAM, DOWNSTREAM, 5)
    assert egress_ctrl_set(p, t) == 0


def test_egress_high_port_index() -> None:
    # Port 40 lives in vector DWORD 1, bit 8.
    p, t = _pair(EC | (64 << 8), DOWNSTREAM, DOWNSTREAM, 40, _vec(a=40))
    assert egress_ctrl_set(p, t) == 1
    # and the bit of port 8 in DWORD 0 must not be mistaken for it
    p, t = _pair(EC | (64 << 8), DOWNSTREAM, DOWNSTREAM, 40, _vec(a=8))
    assert egress_ctrl_set(p, t) == 0


def test_egress_port_out_of_range() -> None:
    p, t = _pair(EC | (8 << 8), DOWNSTREAM, DOWNSTREAM, 40)
    assert egress_ctrl_set(p, t) == -errno.ERANGE


def test_egress_no_ec_cap() -> None:
    p, t = _pair(32 << 8, DOWNSTREAM, DOWNSTREAM, 5)
    assert egress_ctrl_set(p, t) == -errno.EOPNOTSUPP


def test_egress_pdev_not_downstream() -> None:
    p, t = _pair(EC | (32 << 8), ENDPOINT, DOWNSTREAM, 5)
    assert egress_ctrl_set(p, t) == -errno.EOPNOTSUPP


def test_egress_target_not_downstream() -> None:
    p, t = _pair(EC | (32 << 8), DOWNSTREAM, ENDPOINT, 5)
    assert egress_ctrl_set(p, t) == -errno.EOPNOTSUPP


def test_egress_pdev_pcie_bridge() -> None:
    p, t = _pair(EC | (32 << 8), PCIE_BRIDGE, DOWNSTREAM, 5)
    assert egress_ctrl_set(p, t) == -errno.EOPNOTSUPP


def test_egress_target_pcie_bridge() -> None:
    p, t = _pair(EC | (32 << 8), DOWNSTREAM, PCIE_BRIDGE, 5)
    assert egress_ctrl_set(p, t) == -errno.EOPNOTSUPP


def test_egress_root_port() -> None:
    p, t = _pair(EC | (32 << 8), ROOT_PORT, ROOT_PORT, 5, _vec(a=5))
    assert egress_ctrl_set(p, t) == 1


def test_egress_vector_unreadable_dword_is_read_error() -> None:
    """A vector DWORD that config space did not give us cannot be read: a negative errno, which
    pci_acs_p2pdma_decision() turns into NOT_SUPPORTED."""
    from dataclasses import replace

    p, t = _pair(EC | (64 << 8), DOWNSTREAM, DOWNSTREAM, 40, _vec(a=40))
    assert p.acs is not None
    short = replace(p, acs=replace(p.acs, egress_vector=p.acs.egress_vector[:1]))
    assert egress_ctrl_set(short, t) == -errno.EIO
    assert acs_decision(EC, True, egress_ctrl_set(short, t)) == N
