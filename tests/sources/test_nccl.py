"""`--nccl-xml FILE`: NCCL topology dumps written by the tests; the missing switch downstream and root
ports are put back, ACS is unknown everywhere, hostile or malformed XML is refused with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p2pdma.cli import main
from p2pdma.errors import SourceError
from p2pdma.p2p.decide import MapType, calc_map_type_and_dist
from p2pdma.pci import config as cfg
from p2pdma.sources.nccl import cpu_family, parse_nccl_xml, read_nccl_xml

GPU_A, NIC, GPU_B, GPU_C = "0000:19:00.0", "0000:1a:00.0", "0000:3b:00.0", "0000:b1:00.0"
SWITCH = "0000:17:00.0"


def _pci(busid: str, cls: str, ids: str, inner: str = "") -> str:
    vendor, device = ids.split(":")
    return (f'<pci busid="{busid}" class="{cls}" vendor="0x{vendor}" device="0x{device}"'
            f' subsystem_vendor="0x{vendor}" subsystem_device="0x0000" link_speed="16.0 GT/s PCIe"'
            f' link_width="16">{inner}</pci>')


def nccl_xml(vendor: str = "GenuineIntel", familyid: int = 6) -> str:
    """Socket 0: a switch (upstream port 17:00.0) with a GPU and a NIC, and a GPU on its own root
    port; socket 1: one GPU. As NCCL_TOPO_DUMP_FILE writes it: no downstream or root ports."""
    gpu = '<gpu dev="{}" sm="90" rank="{}" gdr="1"/>'
    nic = '<nic><net name="mlx5_0" dev="0" speed="200000" port="1" gdr="1"/></nic>'
    switch = _pci(SWITCH, "0x060400", "1000:c030",
                  _pci(GPU_A, "0x030200", "10de:2330", gpu.format(0, 0)) + _pci(NIC, "0x020700", "15b3:1021", nic))
    cpu0 = (f'<cpu numaid="0" affinity="0000ffff" arch="x86_64" vendor="{vendor}" familyid="{familyid}"'
            f' modelid="143">{switch}{_pci(GPU_B, "0x030200", "10de:2330", gpu.format(1, 1))}</cpu>')
    cpu1 = (f'<cpu numaid="1" affinity="ffff0000" arch="x86_64" vendor="{vendor}" familyid="{familyid}"'
            f' modelid="143">{_pci(GPU_C, "0x030200", "10de:2330", gpu.format(2, 2))}</cpu>')
    return f'<system version="1">\n  {cpu0}\n  {cpu1}\n</system>\n'


def test_tree_with_synthetic_ports() -> None:
    t = parse_nccl_xml(nccl_xml().encode(), name="n")
    assert [h.name for h in t.host_bridges] == ["nccl-cpu0", "nccl-cpu1"]
    gpu = t[GPU_A]
    dsp = t[gpu.parent or ""]
    assert dsp.port_type == cfg.PCI_EXP_TYPE_DOWNSTREAM and dsp.parent == SWITCH
    assert dsp.bdf.startswith("ffff0000:19:") and "synthetic" in (dsp.device_name or "")
    assert t[NIC].parent != gpu.parent  # one downstream port per child bus
    usp = t[SWITCH]
    assert usp.port_type == cfg.PCI_EXP_TYPE_UPSTREAM and usp.is_bridge
    rp = t[usp.parent or ""]
    assert rp.port_type == cfg.PCI_EXP_TYPE_ROOT_PORT and rp.parent is None and rp.host_bridge == "nccl-cpu0"
    assert t[GPU_C].host_bridge == "nccl-cpu1" and t[GPU_C].numa_node == 1
    assert gpu.driver == "nvidia" and gpu.cur_speed == 16.0 and gpu.cur_width == 16
    assert all(not d.acs_known for d in t.devices)
    assert any("synthetic" in w for w in t.warnings) and any("whitelist" in w for w in t.warnings)


def test_verdicts_are_uncertain_below_the_switch() -> None:
    t = parse_nccl_xml(nccl_xml().encode(), name="n")
    v = calc_map_type_and_dist(t, GPU_A, NIC)
    assert v.map_type == MapType.BUS_ADDR and v.distance == 4 and v.common == SWITCH
    assert not v.certain and set(v.unknown_ports) == {GPU_A, t[GPU_A].parent, SWITCH, t[NIC].parent, NIC}
    far = calc_map_type_and_dist(t, GPU_A, GPU_B)
    # Intel, and the file has no host bridge device: the whitelist verdict cannot be certain (issue 15)
    assert far.map_type == MapType.NOT_SUPPORTED and not far.certain
    assert "host bridge device not in this input" in far.unknown
    amd = parse_nccl_xml(nccl_xml("AuthenticAMD", 0x8F).encode(), name="amd")
    assert amd.cpu is not None and amd.cpu.family == 0x17
    assert calc_map_type_and_dist(amd, GPU_A, GPU_C).map_type == MapType.THRU_HOST_BRIDGE


def test_cpu_family_encoding() -> None:
    assert cpu_family(6) == 6 and cpu_family(0x8F) == 0x17 and cpu_family(0xAF) == 0x19 and cpu_family(25) == 25


@pytest.mark.parametrize(
    ("text", "msg"),
    [
        ('<?xml version="1.0"?><!DOCTYPE system [<!ENTITY x "y">]><system/>', "refused"),
        ('<!DOCTYPE system SYSTEM "nccl.dtd"><system version="1"/>', "DOCTYPE"),
        ("<system><cpu><pci busid=</cpu></system>", "not well-formed"),
        ('<topology version="2"/>', "not an NCCL topology"),
        ('<system version="1"><cpu numaid="0"/></system>', "no <pci>"),
        ("<system>" + "<cpu>" * 300 + "</cpu>" * 300 + "</system>", "nested"),
    ],
)
def test_refused(text: str, msg: str) -> None:
    with pytest.raises(SourceError, match=msg) as exc:
        parse_nccl_xml(text.encode(), name="bad", where="bad.xml")
    assert "\n" not in str(exc.value)


def test_bad_busid_is_a_warning() -> None:
    text = nccl_xml().replace(f'busid="{GPU_B}"', 'busid="nonsense"')
    t = parse_nccl_xml(text.encode(), name="w")
    assert GPU_B not in t and any("nonsense" in w for w in t.warnings)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "topo.xml"
    f.write_text(nccl_xml())
    assert read_nccl_xml(f).name == "topo"
    assert main(["explain", "--nccl-xml", str(f), GPU_A, NIC, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["map_type"] == "BUS_ADDR" and doc["certain"] is False
    assert main(["fix", "--nccl-xml", str(f), GPU_A, NIC, GPU_B, "--json"]) == 0
    fix = json.loads(capsys.readouterr().out)
    assert fix["certain"] is False and fix["changes"] == [] and fix["no_acs_help"]
    assert main(["topo", "--nccl-xml", str(tmp_path / "missing.xml")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
