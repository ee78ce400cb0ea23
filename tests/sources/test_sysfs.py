"""The sysfs reader on real machines' trees (../shared/data), on this machine's live /sys, and on
trees written from specs; bad files give one-line warnings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p2pdma.errors import SourceError
from p2pdma.p2p.decide import MapType, calc_map_type_and_dist
from p2pdma.p2p.matrix import compute_matrix
from p2pdma.sources.spec import parse_spec
from p2pdma.sources.sysfs import parse_cpuinfo, read_root, resolve_in_root, write_root
from tests.helpers import dev, hb, machine


def test_intel_5500_two_socket(real_roots: dict[str, Path]) -> None:
    t = read_root(real_roots["40intel64-2g2n4c+pcilocality"])
    assert len(t.devices) == 37
    assert sum(d.is_bridge for d in t.devices) == 14
    assert [h.name for h in t.host_bridges] == ["pci0000:00", "pci0000:40"]
    assert t.cpu is not None and t.cpu.vendor == "GenuineIntel" and not t.cpu.hypervisor
    # 64-byte config files: ACS unknown everywhere, and the reader says so
    assert all(not d.acs_known and d.config_size == 64 for d in t.devices)
    assert any("ACS unknown for 37 of 37" in w for w in t.warnings)
    # the two functions of the bnx2 NIC sit below root port 00:05.0
    assert t["0000:02:00.0"].parent == "0000:00:05.0" == t["0000:02:00.1"].parent
    v = calc_map_type_and_dist(t, "0000:02:00.0", "0000:02:00.1")
    assert v.map_type == MapType.BUS_ADDR and v.distance == 2
    assert not v.certain and v.unknown_ports == ("0000:02:00.0", "0000:00:05.0", "0000:02:00.1")
    # different root ports, host bridge 8086:3406 (Intel 5520) is not whitelisted
    v2 = calc_map_type_and_dist(t, "0000:02:00.0", "0000:43:00.0")
    assert v2.map_type == MapType.NOT_SUPPORTED and v2.certain
    assert "not in the P2PDMA whitelist" in v2.reason


def test_xeon_e5_req_same_host_bridge(real_roots: dict[str, Path]) -> None:
    t = read_root(real_roots["32em64t-2n8c+dax+nvme+mic+dimms"])
    assert len(t.devices) == 137
    hb0 = t.host_bridge("pci0000:00")
    assert hb0.host_dev == "0000:00:00.0" and t[hb0.host_dev].device == 0x3C00
    # The igb NIC (below root port 00:01.1) and the NVMe drive on the root bus share host bridge
    # pci0000:00 whose 3c00 entry allows P2P within one host bridge.
    v = calc_map_type_and_dist(t, "0000:02:00.0", "0000:00:02.0")
    assert v.map_type == MapType.THRU_HOST_BRIDGE and v.via == "whitelist"
    assert v.distance == 3  # chains: igb, 00:01.1 (2) + NVMe on the root bus (1)
    # ... but across the two sockets' host bridges the same entry refuses it
    other = [d for d in t.endpoints if d.host_bridge == "pci0000:80"]
    assert other
    v2 = calc_map_type_and_dist(t, "0000:02:00.0", other[0].bdf)
    assert v2.map_type == MapType.NOT_SUPPORTED
    assert "whitelisted only within one host bridge" in v2.reason


def test_pci_domain_wider_than_16_bits(real_roots: dict[str, Path]) -> None:
    t = read_root(real_roots["2pa-pcidomain32bits"])
    assert "10000:00:04.0" in t
    d = t["10000:00:04.0"]
    assert d.domain == 0x10000 and d.host_bridge == "pci10000:00"
    assert [h.name for h in t.host_bridges] == ["pci0000:00", "pci10000:00"]
    m = compute_matrix(t)
    i, j = m.bdfs.index("0000:00:01.0"), m.bdfs.index("10000:00:04.0")
    assert m.map_type[i, j] == m.verdict(i, j).map_type


def _has_pci(root: Path) -> bool:
    return (root / "sys/bus/pci/devices").is_dir() or any((root / "sys/devices").glob("pci*"))


def test_matrix_of_real_trees_equals_per_pair(real_roots: dict[str, Path]) -> None:
    for root in real_roots.values():
        if not _has_pci(root):  # nvidia-dgx-gb10 gathered no PCI at all: refused with one line
            with pytest.raises(SourceError, match="cannot list PCI devices"):
                read_root(root)
            continue
        t = read_root(root)
        for profile in ("latest", "classic"):
            m = compute_matrix(t, profile, include_bridges=True)
            for i in range(len(m.bdfs)):
                for j in range(len(m.bdfs)):
                    v = m.verdict(i, j)
                    assert (m.map_type[i, j], m.distance[i, j], m.certain[i, j]) == (
                        v.map_type, v.distance, v.certain), (root.name, m.bdfs[i], m.bdfs[j])


def test_live_sys_reads_and_decides() -> None:
    if not Path("/sys/bus/pci/devices").is_dir():
        pytest.skip("this machine has no /sys/bus/pci")
    t = read_root("/")
    assert len(t.devices) == len(os.listdir("/sys/bus/pci/devices"))
    m = compute_matrix(t)
    assert all(m.map_type[i, i] in (MapType.BUS_ADDR, MapType.THRU_HOST_BRIDGE) for i in range(len(m.bdfs)))


def test_spec_roundtrip_through_sysfs_equals_spec(tmp_path: Path) -> None:
    spec = machine([hb("pci0000:00", [
        {"bdf": "0000:00:00.0", "id": "8086:2020", "class": 0x060000},
        dev("0000:00:01.0", "8086:352a", port="root-port", port_number=1, link=[16.0, 16],
            acs={"cap": 0x7F, "ctrl": 0x1D}, children=[
                dev("0000:01:00.0", "15b3:1021", bars=[{"size": "32M", "prefetch": True, "bits": 64}],
                    vfs={"count": 2, "id": "15b3:101e", "first_bdf": "0000:01:00.2"}),
            ]),
    ], numa_node=1)])
    m = parse_spec(spec)
    direct = m.topology()
    write_root(tmp_path, m.raws, cpu=m.cpu)
    back = read_root(tmp_path, name=direct.name)
    assert back.devices == direct.devices
    assert back.host_bridges == direct.host_bridges
    assert back.cpu == direct.cpu
    nic = back["0000:01:00.0"]
    assert nic.bars[0].size == 32 << 20 and nic.bars[0].prefetchable and nic.bars[0].is_64bit
    assert nic.numa_node == 1 and nic.iommu_group is None  # a spec states groups or has none
    assert back["0000:01:00.3"].physfn == "0000:01:00.0"
    assert back["0000:00:01.0"].cur_speed == 16.0 and back["0000:00:01.0"].cur_width == 16


def test_malformed_files_warn_with_their_name(tmp_path: Path) -> None:
    spec = machine([hb("pci0000:00", [dev("0000:00:01.0")])])
    m = parse_spec(spec)
    write_root(tmp_path, m.raws, cpu=m.cpu)
    d = tmp_path / "sys/devices/pci0000:00/0000:00:01.0"
    (d / "resource").write_text("garbage\n")
    (d / "numa_node").write_text("north\n")
    (d / "config").write_bytes(b"\x00" * 10)
    os.unlink(tmp_path / "proc/cpuinfo")
    t = read_root(tmp_path)
    text = "\n".join(t.warnings)
    assert "0000:00:01.0: resource:" in text
    assert "0000:00:01.0/numa_node: not a number" in text
    assert "0000:00:01.0: config: config space is 10 bytes" in text
    assert "proc/cpuinfo: missing" in text
    assert all("\n" not in w for w in t.warnings)
    # the vendor still comes from the sysfs ``vendor`` file
    assert t["0000:00:01.0"].vendor == 0x10DE


def test_missing_root_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError):
        read_root(tmp_path / "nope")
    with pytest.raises(SourceError, match="cannot list PCI devices"):
        read_root(tmp_path)


def test_resolve_in_root_refuses_climbing_out(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    os.symlink("../../x", tmp_path / "a" / "up")
    os.symlink("/a", tmp_path / "abs")
    with pytest.raises(Exception, match="up"):
        resolve_in_root(tmp_path, "a/up")
    assert str(resolve_in_root(tmp_path, "abs")) == "a"
    os.symlink("loop2", tmp_path / "loop1")
    os.symlink("loop1", tmp_path / "loop2")
    with pytest.raises(Exception, match="loop1"):
        resolve_in_root(tmp_path, "loop1")


def test_parse_cpuinfo() -> None:
    cpu = parse_cpuinfo("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t: 1\n"
                        "flags\t: fpu hypervisor\n\nprocessor\t: 1\nvendor_id\t: Other\n")
    assert cpu is not None and (cpu.vendor, cpu.family, cpu.hypervisor) == ("AuthenticAMD", 25, True)
    assert parse_cpuinfo("") is None
