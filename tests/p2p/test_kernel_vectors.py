"""Exact vectors for calc_map_type_and_dist(): each kernel case as a sysfs tree in a temp dir,
read back by the sysfs reader, decided under both rule profiles.

The reference machine (chain lengths in brackets, counted the kernel's way):

    pci0000:00  00:00.0 host bridge device (id varies)
      00:01.0 root port -> 01:00.0 switch upstream
          02:01.0 DSP pn1 -> 03:00.0 GPU fn0 [4], 03:00.1 GPU fn1 [4]
          02:02.0 DSP pn2 -> 04:00.0 NIC PF [4] (+ VFs 04:00.2..)
          02:03.0 DSP pn3 -> 05:00.0 NVMe [4]
      00:02.0 root port -> 06:00.0 GPU [2]
    pci0000:80  80:00.0 host bridge device -> 80:01.0 root port -> 81:00.0 GPU [2]

The egress-vector and HMAT vectors of the withdrawn v3/v4 `latest` shape were dropped: no kernel tree has them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from p2pdma.p2p.decide import MapType, calc_map_type_and_dist
from p2pdma.pci.topology import Topology
from tests.helpers import as_sysfs, dev, hb, machine

BUS, THRU, NO = MapType.BUS_ADDR, MapType.THRU_HOST_BRIDGE, MapType.NOT_SUPPORTED
GPU0, GPU1, NIC, NVME, GPU_RP, GPU_S1 = (
    "0000:03:00.0", "0000:03:00.1", "0000:04:00.0", "0000:05:00.0", "0000:06:00.0", "0000:81:00.0",
)
DSP1, DSP2, DSP3, USP, RP1 = "0000:02:01.0", "0000:02:02.0", "0000:02:03.0", "0000:01:00.0", "0000:00:01.0"
RR_CR = 0x1D  # SV|RR|CR|UF
EC = 0x20


def reference(
    *,
    host_id: str = "8086:2020",
    host_id_80: str | None = None,
    dsp_acs: dict[str, dict[str, Any]] | None = None,
    usp_acs: dict[str, Any] | None = None,
    gpu0_acs: dict[str, Any] | None = None,
    dsp1_config: int = 4096,
    vfs: int = 0,
    second_socket: bool = False,
    cpu: dict[str, Any] | None = None,
    hmat: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    dsp_acs = dsp_acs or {}

    def dsp(bdf: str, pn: int, child: dict[str, Any] | list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
        d = dev(bdf, "1000:c030", port="switch-downstream", port_number=pn, link=[32.0, 16],
                acs=dsp_acs.get(bdf, {"cap": 0x7F, "ctrl": 0}),
                children=child if isinstance(child, list) else [child], **kw)
        return d

    nic = dev(NIC, "15b3:1021", class_=0)
    nic.pop("class_")
    if vfs:
        nic["vfs"] = {"count": vfs, "id": "15b3:101e", "first_bdf": "0000:04:00.2"}
    gpu0 = dev(GPU0, class_=0)
    gpu0.pop("class_")
    gpu0["multifunction"] = True
    if gpu0_acs:
        gpu0["acs"] = gpu0_acs
    usp: dict[str, Any] = dev(USP, "1000:c030", port="switch-upstream", link=[32.0, 16], children=[
        dsp(DSP1, 1, [gpu0, dev(GPU1)], config_size=dsp1_config),
        dsp(DSP2, 2, nic),
        dsp(DSP3, 3, dev(NVME, "144d:a80a")),
    ])
    if usp_acs:
        usp["acs"] = usp_acs
    hbs = [hb("pci0000:00", [
        {"bdf": "0000:00:00.0", "id": host_id, "class": 0x060000},
        dev(RP1, "8086:352a", port="root-port", port_number=1, children=[usp]),
        dev("0000:00:02.0", "8086:352a", port="root-port", port_number=2, children=[dev(GPU_RP)]),
    ])]
    if second_socket:
        hbs.append(hb("pci0000:80", [
            {"bdf": "0000:80:00.0", "id": host_id_80 or host_id, "class": 0x060000},
            dev("0000:80:01.0", "8086:352a", port="root-port", port_number=1, children=[dev(GPU_S1)]),
        ]))
    kw: dict[str, Any] = {}
    if cpu:
        kw["cpu"] = cpu
    if hmat:
        kw["hmat"] = hmat
    return machine(hbs, **kw)


def both(topo: Topology, p: str, c: str) -> tuple[tuple[MapType, int], tuple[MapType, int]]:
    lat = calc_map_type_and_dist(topo, p, c, "7.2")
    cla = calc_map_type_and_dist(topo, p, c, "6.1")
    return (lat.map_type, lat.distance), (cla.map_type, cla.distance)


def test_distances_without_acs(tmp_path: Path) -> None:
    t = as_sysfs(reference(), tmp_path)
    assert both(t, GPU0, GPU0) == ((BUS, 0), (BUS, 0))  # same function
    assert both(t, GPU0, GPU1) == ((BUS, 2), (BUS, 2))  # two functions of one device
    assert both(t, GPU0, NIC) == ((BUS, 4), (BUS, 4))  # two devices under one switch
    assert both(t, NIC, NVME) == ((BUS, 4), (BUS, 4))
    # no common upstream bridge: sum of the chain lengths, 4 + 2; whitelisted 8086:2020
    assert both(t, GPU0, GPU_RP) == ((THRU, 6), (THRU, 6))
    assert both(t, GPU_RP, GPU0) == ((THRU, 6), (THRU, 6))
    v = calc_map_type_and_dist(t, GPU0, NIC)
    assert v.common == USP and v.acs_ports == () and v.fix is None and v.certain
    assert v.path == (GPU0, DSP1, USP, DSP2, NIC)


def test_acs_redirect_on_downstream_ports(tmp_path: Path) -> None:
    acs = {"cap": 0x7F, "ctrl": RR_CR}
    t = as_sysfs(reference(dsp_acs={DSP1: acs, DSP2: acs}), tmp_path)
    assert both(t, GPU0, NIC) == ((THRU, 4), (THRU, 4))
    v = calc_map_type_and_dist(t, GPU0, NIC, "7.2")
    assert v.acs_ports == (DSP1, DSP2)  # provider side first, as the kernel lists them
    assert v.fix == f"pci=disable_acs_redir={DSP1};{DSP2}"
    assert v.kernel_log == (
        f"pci {NIC}: ACS redirect is set between the client and provider ({GPU0})",
        f"pci {NIC}: to disable ACS redirect for this path, add the kernel parameter: "
        f"pci=disable_acs_redir={DSP1};{DSP2}",
    )
    c = calc_map_type_and_dist(t, NIC, GPU0, "6.1")
    assert c.acs_ports == (DSP2, DSP1)
    assert c.kernel_log[1].endswith(f"to disable ACS redirect for this path, add the kernel parameter: "
                                    f"pci=disable_acs_redir={DSP2};{DSP1}")
    # two functions of one device: their common bridge is DSP1, and the kernel examines the common
    # bridge too (with no target), so its RR/CR redirect them as well
    assert both(t, GPU0, GPU1) == ((THRU, 2), (THRU, 2))
    assert calc_map_type_and_dist(t, GPU0, GPU1).acs_ports == (DSP1,)
    # redirect with a host bridge that is not whitelisted: refused
    t2 = as_sysfs(reference(host_id="8086:1234", dsp_acs={DSP1: acs}), tmp_path / "b")
    assert both(t2, GPU0, NIC) == ((NO, 4), (NO, 4))
    v2 = calc_map_type_and_dist(t2, GPU0, NIC)
    assert "pci 0000:00:00.0: Host bridge not in P2PDMA whitelist: 8086:1234" in v2.kernel_log
    assert v2.fix == f"pci=disable_acs_redir={DSP1}"


def test_multifunction_device_with_acs(tmp_path: Path) -> None:
    # Function 0 has ACS with RR: it is a_child of the common DSP for the fn0/fn1 pair.
    t = as_sysfs(reference(gpu0_acs={"cap": 0x7F, "ctrl": 0x04}), tmp_path)
    assert both(t, GPU0, GPU1) == ((THRU, 2), (THRU, 2))
    assert both(t, GPU1, GPU0) == ((THRU, 2), (THRU, 2))
    assert calc_map_type_and_dist(t, GPU1, GPU0).acs_ports == (GPU0,)
    # EC alone on an endpoint function: pci_bridge_has_acs_redir() calls it a redirect.
    t2 = as_sysfs(reference(gpu0_acs={"cap": 0x7F, "ctrl": EC}), tmp_path / "b")
    v = calc_map_type_and_dist(t2, GPU0, GPU1, "7.2")
    assert v.map_type == THRU and v.ports[0].state.name == "REDIRECT"
    assert both(t2, GPU0, GPU1)[1] == (THRU, 2)
    # GPU0 as the same function: its own ACS is still examined (no target): RR redirects
    assert both(t, GPU0, GPU0) == ((THRU, 0), (THRU, 0))


def test_sriov_vfs_walk_up_from_the_pf(tmp_path: Path) -> None:
    t = as_sysfs(reference(vfs=3), tmp_path)
    vf1, vf2 = "0000:04:00.2", "0000:04:00.3"
    assert t[vf1].physfn == NIC and t[vf1].parent == DSP2  # pci_upstream_bridge(pci_physfn(vf))
    assert both(t, vf1, NIC) == ((BUS, 2), (BUS, 2))
    assert both(t, vf1, vf2) == ((BUS, 2), (BUS, 2))
    assert both(t, vf1, GPU0) == ((BUS, 4), (BUS, 4))
    assert both(t, vf1, GPU_RP) == ((THRU, 6), (THRU, 6))


def test_whitelist_req_same_host_bridge(tmp_path: Path) -> None:
    # 8086:3c00 (Xeon E5) is whitelisted only within one host bridge.
    t = as_sysfs(reference(host_id="8086:3c00", second_socket=True), tmp_path)
    assert both(t, GPU0, GPU_RP) == ((THRU, 6), (THRU, 6))  # one host bridge
    assert both(t, GPU0, GPU_S1) == ((NO, 6), (NO, 6))  # two host bridges
    v = calc_map_type_and_dist(t, GPU0, GPU_S1)
    assert "whitelisted only within one host bridge" in v.reason
    assert v.path == (GPU0, DSP1, USP, RP1, "pci0000:00", "pci0000:80", "0000:80:01.0", GPU_S1)
    # 8086:2020 (Skylake-E) has no such flag: two whitelisted host bridges pass
    t2 = as_sysfs(reference(host_id="8086:2020", second_socket=True), tmp_path / "b")
    assert both(t2, GPU0, GPU_S1) == ((THRU, 6), (THRU, 6))
    # one whitelisted, one not: refused
    t3 = as_sysfs(reference(host_id="8086:2020", host_id_80="8086:1234", second_socket=True), tmp_path / "c")
    assert both(t3, GPU0, GPU_S1) == ((NO, 6), (NO, 6))
    assert both(t3, GPU0, GPU_RP) == ((THRU, 6), (THRU, 6))


def test_host_bridge_device_must_be_00_0_or_root_port(tmp_path: Path) -> None:
    # No 00.0 device: the first root-bus device is root port 00:01.0 with a whitelisted id.
    spec = reference(host_id="8086:2020")
    devices = spec["host_bridges"][0]["devices"]
    devices.pop(0)
    devices[0]["id"] = "8086:2030"
    t = as_sysfs(spec, tmp_path)
    assert t.host_bridge("pci0000:00").host_dev == RP1
    assert both(t, GPU0, GPU_RP) == ((THRU, 6), (THRU, 6))
    # First root-bus device is an RCiEP at 00:01.0: no host bridge device, nothing is whitelisted.
    spec2 = reference(host_id="8086:2020")
    devs2 = spec2["host_bridges"][0]["devices"]
    devs2[0] = dev("0000:00:01.0", "8086:2020", port="rc-endpoint")
    devs2[1]["bdf"] = "0000:00:03.0"
    spec2["host_bridges"][0]["devices"] = devs2
    t2 = as_sysfs(spec2, tmp_path / "b")
    assert t2.host_bridge("pci0000:00").host_dev is None
    assert both(t2, GPU0, GPU_RP) == ((NO, 6), (NO, 6))


@pytest.mark.parametrize(
    ("vendor", "family", "expect"),
    [("AuthenticAMD", 0x17, THRU), ("AuthenticAMD", 0x19, THRU), ("AuthenticAMD", 0x16, NO),
     ("HygonGenuine", 0x18, NO), ("GenuineIntel", 6, NO)],
)
def test_amd_zen(tmp_path: Path, vendor: str, family: int, expect: MapType) -> None:
    t = as_sysfs(reference(host_id="1022:14a4", second_socket=True,
                           cpu={"vendor": vendor, "family": family}), tmp_path)
    assert both(t, GPU0, GPU_S1) == ((expect, 6), (expect, 6))
    assert both(t, GPU0, NIC) == ((BUS, 4), (BUS, 4))


def test_unreadable_config_makes_the_verdict_uncertain(tmp_path: Path) -> None:
    t = as_sysfs(reference(dsp1_config=64), tmp_path)
    assert not t[DSP1].acs_known and t[DSP2].acs_known
    v = calc_map_type_and_dist(t, GPU0, NIC)
    assert v.map_type == BUS and v.certain is False and v.unknown_ports == (DSP1,)
    assert "ACS unknown at 0000:02:01.0" in v.reason
    # the port type came from the tree's shape, and is marked as inferred
    assert t[DSP1].port_type_name == "switch-downstream" and t[DSP1].port_type_inferred
    # a pair whose path avoids DSP1 stays certain; so does one with no common bridge
    assert calc_map_type_and_dist(t, NIC, NVME).certain
    assert calc_map_type_and_dist(t, GPU0, GPU_RP).certain


def test_root_with_links_escaping_it(tmp_path: Path) -> None:
    from p2pdma.sources.sysfs import read_root

    as_sysfs(reference(), tmp_path)
    root = tmp_path / "root"
    outside = tmp_path / "outside" / "0000:09:00.0"
    outside.mkdir(parents=True)
    (outside / "vendor").write_text("0x10de\n")
    devs = root / "sys/bus/pci/devices"
    os.symlink("../../../../../outside/0000:09:00.0", devs / "0000:09:00.0")
    # an absolute link is taken relative to the root, never to this machine's /
    os.unlink(devs / GPU_RP)
    os.symlink(f"/sys/devices/pci0000:00/0000:00:02.0/{GPU_RP}", devs / GPU_RP)
    os.symlink("/etc", devs / "0000:0a:00.0")
    t = read_root(root)
    assert "0000:09:00.0" not in t and "0000:0a:00.0" not in t
    assert GPU_RP in t and t[GPU_RP].parent == "0000:00:02.0"
    assert any("0000:09:00.0" in w and "outside the root" in w for w in t.warnings)
    assert any("0000:0a:00.0" in w for w in t.warnings)
