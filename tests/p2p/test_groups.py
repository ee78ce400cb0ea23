"""IOMMU groups as pci_device_group() forms them, on trees with and without ACS at each level:
root port, switch downstream ports, multi-function endpoints, PCIe-to-PCI bridges, unknown ACS."""

from __future__ import annotations

from typing import Any

import pytest

from p2pdma.p2p.fix import plan_fix
from p2pdma.p2p.groups import acs_enabled, iommu_groups, merges
from p2pdma.pci import config as cfg
from p2pdma.pci.topology import Topology
from tests.helpers import as_sysfs, as_topology, dev, hb, machine

FULL = {"cap": 0x5F, "ctrl": 0x1D}  # SV RR CR UF enabled (what the kernel sets with an IOMMU)
EP1, EP2, EP3 = "0000:03:00.0", "0000:04:00.0", "0000:06:00.0"
RP1, USP, DSP1, DSP2, RP2 = "0000:00:01.0", "0000:01:00.0", "0000:02:00.0", "0000:02:01.0", "0000:00:02.0"


def _tree(rp_acs: dict[str, Any] | None, dsp_acs: dict[str, Any] | None, *, usp_mf: bool = False,
          config_size: int = 4096) -> Topology:
    """Root port 1 -> switch (two downstream ports, a GPU each); root port 2 (ACS on) -> a NIC."""

    def opt(acs: dict[str, Any] | None) -> dict[str, Any]:
        return {"acs": dict(acs)} if acs else {}

    dsps = [
        dev(bdf, "10b5:9797", port="switch-downstream", port_number=i + 1, config_size=config_size, **opt(dsp_acs),
            children=[dev(ep, "10de:2330")])
        for i, (bdf, ep) in enumerate(((DSP1, EP1), (DSP2, EP2)))
    ]
    usp = dev(USP, "10b5:9797", port="switch-upstream", children=dsps, multifunction=usp_mf)
    rp1 = dev(RP1, "8086:2030", port="root-port", port_number=1, children=[usp], **opt(rp_acs))
    rp2 = dev(RP2, "8086:2031", port="root-port", port_number=2, acs=dict(FULL),
              children=[dev(EP3, "15b3:1021")])
    host = dev("0000:00:00.0", "8086:2020", port="rc-endpoint", **{"class": 0x060000})
    return as_topology(machine([hb("pci0000:00", [host, rp1, rp2])]))


def _together(topo: Topology, *bdfs: str) -> bool:
    g = iommu_groups(topo)
    return len({g.index[b] for b in bdfs}) == 1


@pytest.mark.parametrize(
    ("rp", "dsp", "shared"),
    [
        (FULL, FULL, []),  # isolated everywhere: one function per group
        (FULL, None, [[DSP1, EP1], [DSP2, EP2]]),  # no ACS on the downstream ports
        (FULL, {"cap": 0x5F, "ctrl": 0x11}, [[DSP1, EP1], [DSP2, EP2]]),  # SV|UF only: RR/CR missing
        (None, FULL, [[RP1, USP, DSP1, DSP2, EP1, EP2]]),  # no ACS at the root port: all below share
        (None, None, [[RP1, USP, DSP1, DSP2, EP1, EP2]]),
    ],
)
def test_acs_at_each_level(rp: dict[str, Any] | None, dsp: dict[str, Any] | None, shared: list[list[str]]) -> None:
    topo = _tree(rp, dsp)
    g = iommu_groups(topo)
    multi = sorted(sorted(x.devices) for x in g.groups if len(x.devices) > 1)
    assert multi == sorted(sorted(s) for s in shared)
    assert all(x.certain for x in g.groups)
    assert len(g.group_of(EP3).devices) == 1  # the other root port is untouched


def test_missing_capability_bits_count_as_hard_wired() -> None:
    # pci_acs_flags_enabled(): only controllable bits must be set; SV-only capability, SV on
    topo = _tree(FULL, {"cap": 0x01, "ctrl": 0x01})
    assert not _together(topo, DSP1, EP1)
    assert acs_enabled(topo[DSP1], cfg.PCI_ACS_SV | cfg.PCI_ACS_RR, assume=False)


def test_multifunction_upstream_port_needs_its_own_acs() -> None:
    # single-function USP: ACS not applicable (isolated); multi-function without ACS: not isolated
    assert not _together(_tree(FULL, FULL, usp_mf=False), USP, DSP1)
    assert _together(_tree(FULL, FULL, usp_mf=True), USP, DSP1, DSP2, EP1, EP2)


@pytest.mark.parametrize(("acs", "alone"), [(None, False), ({"cap": 0x1F, "ctrl": 0x1D}, True)])
def test_multifunction_endpoint(acs: dict[str, Any] | None, alone: bool) -> None:
    extra = {"acs": dict(acs)} if acs else {}
    fns = [dev(f"0000:05:00.{f}", "15b3:1017", multifunction=True, **extra) for f in range(2)]
    rp = dev("0000:00:03.0", "8086:2032", port="root-port", port_number=3, acs=dict(FULL), children=fns)
    topo = as_topology(machine([hb("pci0000:00", [rp])]))
    assert _together(topo, "0000:05:00.0", "0000:05:00.1") is not alone
    assert not _together(topo, "0000:05:00.0", "0000:00:03.0")


def test_root_bus_functions_of_one_slot() -> None:
    fns = [dev(f"0000:00:14.{f}", "8086:a0ed", port="rc-endpoint", multifunction=True) for f in range(3)]
    topo = as_topology(machine([hb("pci0000:00", [*fns, dev("0000:00:15.0", "8086:a0e8", port="rc-endpoint")])]))
    assert _together(topo, "0000:00:14.0", "0000:00:14.1", "0000:00:14.2")
    assert not _together(topo, "0000:00:14.0", "0000:00:15.0")


def test_pcie_to_pci_bridge_aliases_everything_below() -> None:
    legacy = [dev(f"0000:02:0{i}.0", "1000:0030", port=None) for i in range(2)]
    bridge = dev("0000:01:00.0", "8086:244e", port="pcie-to-pci", children=legacy)
    rp = dev(RP1, "8086:2030", port="root-port", port_number=1, acs=dict(FULL), children=[bridge])
    topo = as_topology(machine([hb("pci0000:00", [rp])]))
    assert _together(topo, "0000:01:00.0", "0000:02:00.0", "0000:02:01.0")
    assert not _together(topo, RP1, "0000:01:00.0")


def test_unknown_acs_makes_groups_uncertain(tmp_path: Any) -> None:
    # downstream ports read without root: 64 bytes of config, ACS unknown
    topo = _tree(FULL, FULL, config_size=64)
    g = iommu_groups(topo)
    assert not g.group_of(EP1).certain and not g.group_of(DSP1).certain
    assert g.group_of(EP3).certain and g.group_of(RP1).certain


def test_merges_show_the_cost_of_a_fix() -> None:
    topo = _tree(FULL, FULL)
    plan = plan_fix(topo, [EP1, EP2])
    assert {c.bdf for c in plan.changes} == {DSP1, DSP2}
    ms = merges(iommu_groups(topo), iommu_groups(plan.fixed))
    assert sorted(m.devices for m in ms) == [(DSP1, EP1), (DSP2, EP2)]
    assert all(len(m.before) == 2 and m.certain for m in ms)


def test_clearing_egress_control_alone_costs_no_group() -> None:
    # SV|UF|EC, egress bit for the sibling set, RR/CR off: EC is not part of PCI_ACS_ISOLATED
    topo = _tree(FULL, {"cap": 0x7F, "ctrl": 0x31, "egress": [0x6]})
    before = iommu_groups(topo)
    plan = plan_fix(topo, [EP1, EP2])
    assert [c.cleared for c in plan.changes] == [cfg.PCI_ACS_EC, cfg.PCI_ACS_EC]
    assert merges(before, iommu_groups(plan.fixed)) == []


def test_sysfs_root_groups(tmp_path: Any) -> None:
    topo = as_sysfs(machine([hb("pci0000:00", [dev(RP1, "8086:2030", port="root-port", port_number=1,
                                                     children=[dev("0000:01:00.0", "10de:2330")])])]),
                    tmp_path)
    assert topo.source.startswith("sysfs:")
    assert _together(topo, RP1, "0000:01:00.0")  # a root port without ACS
