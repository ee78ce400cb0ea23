"""IOMMU state from a sysfs root (directory or tar) and VM detection: roots written by the tests, the
real VM capture of ../shared/data, and what `fix`, `topo` and `explain` print from them."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from p2pdma.cli import main
from p2pdma.pci.topology import Topology
from p2pdma.sources.iommu import guest_facts, iommu_from_topology, mapping_text, read_iommu
from p2pdma.sources.sysfs import read_root
from tests.helpers import as_sysfs, as_topology, dev, hb, machine

GPU, NIC = "0000:01:00.0", "0000:03:00.0"


def _spec(**top: object) -> dict[str, object]:
    """Two root ports, a GPU (group 7) and a NIC (group 8): no common upstream bridge."""
    rp = [
        dev("0000:00:01.0", "8086:2030", port="root-port", port_number=1, iommu_group=1,
            children=[dev(GPU, "10de:2330", iommu_group=7)]),
        dev("0000:00:02.0", "8086:2031", port="root-port", port_number=2, iommu_group=2,
            children=[dev(NIC, "15b3:1021", iommu_group=8)]),
    ]
    host = dev("0000:00:00.0", "8086:2020", port="rc-endpoint", iommu_group=0, **{"class": 0x060000})
    return machine([hb("pci0000:00", [host, *rp])], **top)


def _root(tmp: Path, types: dict[int, str] | None, units: list[str] | None,
          groups: bool = True) -> tuple[Path, Topology]:
    """A sysfs root of _spec() with IOMMU units and group types; ``groups`` False: no groups at all."""
    topo = as_sysfs(_spec(), tmp)
    root = tmp / "root"
    if not groups:
        for dirpath, dirs, names in os.walk(root / "sys/devices"):
            if "iommu_group" in dirs + names:
                os.unlink(os.path.join(dirpath, "iommu_group"))
        shutil.rmtree(root / "sys/kernel/iommu_groups")
    if units is not None:
        (root / "sys/class/iommu").mkdir(parents=True)
        for u in units:
            (root / "sys/devices/virtual/iommu" / u).mkdir(parents=True)
            os.symlink(f"../../devices/virtual/iommu/{u}", root / "sys/class/iommu" / u)
    for g, t in (types or {}).items():
        (root / f"sys/kernel/iommu_groups/{g}").mkdir(parents=True, exist_ok=True)
        (root / f"sys/kernel/iommu_groups/{g}/type").write_text(t + "\n")
    return root, topo


def test_iommu_state_from_a_root(tmp_path: Path) -> None:
    root, topo = _root(tmp_path, {7: "DMA-FQ", 8: "identity"}, ["dmar0", "dmar1"])
    st = read_iommu(root, topo)
    assert st.active is True and st.units == ("dmar0", "dmar1")
    assert st.group_types[7] == "DMA-FQ" and st.group_types[8] == "identity"
    assert st.domain_type(topo[GPU]) == "DMA-FQ"
    assert "through the IOMMU" in (mapping_text(st, topo[GPU], "THRU_HOST_BRIDGE") or "")
    assert "physical address" in (mapping_text(st, topo[NIC], "THRU_HOST_BRIDGE") or "")
    assert "never reaches the root complex" in (mapping_text(st, topo[NIC], "BUS_ADDR") or "")
    # the same root as a tar archive
    tb = tmp_path / "cap.tar.gz"
    with tarfile.open(tb, "w:gz") as tf:
        tf.add(root, arcname="machine")
    st2 = read_iommu(tb, topo)
    assert st2.active is True and st2.units == st.units and st2.group_types == st.group_types


def test_no_iommu_and_unknown(tmp_path: Path) -> None:
    root, topo = _root(tmp_path / "a", None, [], groups=False)
    bare = read_root(root)
    assert all(d.iommu_group is None for d in bare.devices)
    assert read_iommu(root, bare).active is False  # sys/class/iommu present and empty
    assert "physical address" in (mapping_text(read_iommu(root, bare), topo[GPU], "THRU_HOST_BRIDGE") or "")
    root2, _ = _root(tmp_path / "b", None, None, groups=False)
    assert read_iommu(root2, read_root(root2)).active is None  # a capture without sys/class/iommu says nothing
    assert iommu_from_topology(as_topology(_spec())).active is None  # a spec says nothing either
    assert iommu_from_topology(topo).active is True  # sysfs iommu_group links


def test_links_out_of_the_root_are_not_followed(tmp_path: Path) -> None:
    root, _ = _root(tmp_path, None, None, groups=False)
    outside = tmp_path / "outside"
    (outside / "dmar9").mkdir(parents=True)
    (root / "sys/class").mkdir(parents=True, exist_ok=True)
    os.symlink("../../../outside", root / "sys/class/iommu")
    assert read_iommu(root, None).units == ()


def test_guest_detection(tmp_path: Path) -> None:
    bare = as_topology(_spec())
    assert not guest_facts(bare).guest and guest_facts(bare).warning() is None
    flagged = as_topology(_spec(cpu={"vendor": "GenuineIntel", "family": 6, "hypervisor": True}))
    facts = guest_facts(flagged)
    assert facts.guest and "hypervisor flag" in (facts.warning() or "")
    qemu = as_topology(machine([hb("pci0000:00", [dev("0000:00:02.0", "1b36:000c", port="root-port",
                                                       children=[dev(GPU, "10de:2330")])])]))
    assert any("pcie-root-port" in e for e in guest_facts(qemu).evidence)
    root, _ = _root(tmp_path, None, None)
    dmi = root / "sys/class/dmi/id"
    dmi.mkdir(parents=True)
    (dmi / "sys_vendor").write_text("QEMU\n")
    (dmi / "product_name").write_text("Standard PC (Q35 + ICH9, 2009)\n")
    assert any("QEMU" in e for e in guest_facts(bare, root).evidence)
    (dmi / "sys_vendor").write_text("Amazon EC2\n")
    (dmi / "product_name").write_text("c5.metal\n")
    assert not guest_facts(bare, root).guest  # bare-metal EC2 keeps the vendor string


def test_real_vm_capture(real_roots: dict[str, Path]) -> None:
    root = real_roots["2pa-pcidomain32bits"]
    topo = read_root(root)
    facts = guest_facts(topo, root)
    assert facts.guest
    assert facts.dmi.get("product_name") == "CloudStack KVM Hypervisor"
    assert any("hypervisor flag" in e for e in facts.evidence) and any("virtio" in e for e in facts.evidence)
    for name in ("40intel64-2g2n4c+pcilocality", "32em64t-2n8c+dax+nvme+mic+dimms"):
        other = real_roots[name]
        assert not guest_facts(read_root(other), other).guest
        assert read_iommu(other, None).active is None  # hwloc-gather does not copy sys/class/iommu


def test_commands_print_iommu_and_vm_facts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = _root(tmp_path, {7: "DMA", 8: "DMA"}, ["dmar0"])
    assert main(["fix", "--root", str(root), GPU, NIC, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["iommu"]["active"] is True and doc["iommu"]["units"] == ["dmar0"]
    assert doc["iommu"]["group_types"] == {"7": "DMA", "8": "DMA"}
    assert all("through the IOMMU" in t["mapping"] for t in doc["iommu"]["thru_host_bridge"])
    assert main(["explain", "--root", str(root), GPU, NIC]) == 0
    assert "iommu: an IOMMU is active" in capsys.readouterr().out
    flagged = tmp_path / "vm.yaml"
    flagged.write_text(json.dumps(_spec(cpu={"vendor": "GenuineIntel", "family": 6, "hypervisor": True})))
    assert main(["topo", "--spec", str(flagged)]) == 0
    assert "warning: this is a virtual machine" in capsys.readouterr().out
