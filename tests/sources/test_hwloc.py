"""hwloc XML: small hand-written v2 documents, the real exports of ../shared/data/hwloc, the tarball
of the same machine as a cross-check, and hostile or malformed XML refused with one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from p2pdma.cli import main
from p2pdma.errors import SourceError
from p2pdma.p2p import platform
from p2pdma.p2p.decide import HB_UNKNOWN, MapType, calc_map_type_and_dist
from p2pdma.p2p.matrix import compute_matrix
from p2pdma.pci import config as cfg
from p2pdma.sources.capture import load_capture
from p2pdma.sources.hwloc import parse_hwloc, read_hwloc

HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE topology SYSTEM "hwloc2.dtd">\n'


def _pci(busid: str, ids: str, cls: str = "0302", inner: str = "", progif: str | None = "00") -> str:
    tail = f" {progif}" if progif is not None else ""
    return (f'<object type="PCIDev" pci_busid="{busid}" pci_type="{cls} [{ids}] [0000:0000] a1{tail}"'
            f' pci_link_speed="31.500000">{inner}</object>')


def _bridge(busid: str, ids: str, secondary: str, inner: str) -> str:
    return (f'<object type="Bridge" bridge_type="1-1" depth="1" bridge_pci="0000:[{secondary}]" pci_busid="{busid}"'
            f' pci_type="0604 [{ids}] [0000:0000] 00 00" pci_link_speed="31.500000">{inner}</object>')


def _doc(cpu: str = "GenuineIntel", family: int = 6) -> str:
    """Two sockets; socket 0: root port -> switch with two GPUs; socket 1: one NIC on a root port."""
    switch = _bridge("0000:01:00.0", "10b5:8796", "02-04",
                     _bridge("0000:02:00.0", "10b5:8796", "03-03", _pci("0000:03:00.0", "10de:2330"))
                     + _bridge("0000:02:01.0", "10b5:8796", "04-04", _pci("0000:04:00.0", "10de:2330")))
    hb0 = ('<object type="Bridge" bridge_type="0-1" depth="0" bridge_pci="0000:[00-04]">'
           + _pci("0000:00:00.0", "8086:2020", cls="0600")
           + _bridge("0000:00:01.0", "8086:352a", "01-04", switch) + "</object>")
    hb1 = ('<object type="Bridge" bridge_type="0-1" depth="0" bridge_pci="0000:[80-81]">'
           + _bridge("0000:80:01.0", "8086:352a", "81-81",
                     _pci("0000:81:00.0", "15b3:1021", cls="0207", progif=None,
                          inner='<object type="OSDev" name="ib0" osdev_type="2"/>'))
           + "</object>")

    def pkg(i: int) -> str:
        infos = (f'<info name="CPUVendor" value="{cpu}"/><info name="CPUFamilyNumber" value="{family}"/>'
                 '<info name="CPUModelNumber" value="143"/><info name="CPUModel" value="Test CPU"/>')
        return (f'<object type="Package" os_index="{i}" cpuset="0x0000000{1 << i}" nodeset="0x0000000{1 << i}">'
                f'{infos}<object type="NUMANode" os_index="{i}" nodeset="0x0000000{1 << i}"/>'
                f'{hb0 if i == 0 else hb1}</object>')

    return (HEAD + '<topology version="2.0"><object type="Machine" os_index="0" nodeset="0x00000003">'
            + pkg(0) + pkg(1) + '</object><info name="OSRelease" value="6.18.0-hw"/></topology>')


def test_small_tree_structure_and_facts() -> None:
    t = parse_hwloc(_doc().encode(), name="small")
    assert [h.name for h in t.host_bridges] == ["pci0000:00", "pci0000:80"]
    assert t.host_bridge("pci0000:00").host_dev == "0000:00:00.0"
    assert t["0000:03:00.0"].parent == "0000:02:00.0" and t["0000:02:00.0"].parent == "0000:01:00.0"
    assert t["0000:01:00.0"].parent == "0000:00:01.0" and t["0000:00:01.0"].parent is None
    assert t["0000:81:00.0"].host_bridge == "pci0000:80"
    # port types come from the nesting, marked inferred; no config space so ACS is unknown
    assert t["0000:00:01.0"].port_type == cfg.PCI_EXP_TYPE_ROOT_PORT
    assert t["0000:01:00.0"].port_type == cfg.PCI_EXP_TYPE_UPSTREAM
    assert t["0000:02:01.0"].port_type == cfg.PCI_EXP_TYPE_DOWNSTREAM
    assert all(d.port_type_inferred for d in t.devices if d.is_bridge)
    assert all(not d.acs_known and d.acs is None for d in t.devices)
    gpu = t["0000:03:00.0"]
    assert (gpu.vendor, gpu.device, gpu.class_code) == (0x10DE, 0x2330, 0x030200)
    assert t["0000:81:00.0"].class_code == 0x020700  # pci_type without the prog-if field
    assert gpu.numa_node == 0 and t["0000:81:00.0"].numa_node == 1
    assert t.cpu is not None and (t.cpu.vendor, t.cpu.family, t.cpu.model) == ("GenuineIntel", 6, 143)
    assert t.kernel_release == "6.18.0-hw"
    assert any("ACS unknown for all" in w for w in t.warnings)
    # the host bridge on socket 1 has no 00.0 in the XML: its device is not in the input, and the
    # root port hwloc lists first does not stand in for it
    hb80 = t.host_bridge("pci0000:80")
    assert hb80.host_dev is None and not hb80.host_bridge_dev_known
    assert t.host_bridge("pci0000:00").host_bridge_dev_known
    assert any(w.startswith("pci0000:80: host bridge device not in this input") and "0000:80:01.0" in w
               for w in t.warnings)


def test_verdicts_below_a_switch_are_uncertain_with_the_path_ports() -> None:
    t = parse_hwloc(_doc().encode(), name="small")
    v = calc_map_type_and_dist(t, "0000:03:00.0", "0000:04:00.0")
    assert v.map_type == MapType.BUS_ADDR and not v.certain
    assert set(v.unknown_ports) == {"0000:03:00.0", "0000:02:00.0", "0000:01:00.0", "0000:02:01.0", "0000:04:00.0"}
    assert "ACS unknown" in v.reason
    # across host bridges ACS does not decide; 8086:2020 is whitelisted but the other host bridge's
    # device is not in the XML: the root port 8086:352a is not checked in its place
    x = calc_map_type_and_dist(t, "0000:03:00.0", "0000:81:00.0")
    assert x.map_type == MapType.NOT_SUPPORTED and x.unknown_ports == ()
    assert "352a" not in x.reason
    m = compute_matrix(t)
    for i in range(len(m.bdfs)):
        for j in range(len(m.bdfs)):
            w = m.verdict(i, j)
            assert (m.map_type[i, j], bool(m.certain[i, j])) == (w.map_type, w.certain)


def test_amd_zen_cpu_from_the_xml_routes_through_the_host_bridge() -> None:
    t = parse_hwloc(_doc(cpu="AuthenticAMD", family=0x19).encode(), name="zen")
    v = calc_map_type_and_dist(t, "0000:03:00.0", "0000:81:00.0")
    assert v.map_type == MapType.THRU_HOST_BRIDGE and v.via == "cpu"


HOSTILE_XML = {
    "billion laughs": ('<?xml version="1.0"?><!DOCTYPE t [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
                       "<topology>&b;</topology>", "refused"),
    "external entity": ('<?xml version="1.0"?><!DOCTYPE t [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                        "<topology>&x;</topology>", "refused"),
    "internal subset": ('<?xml version="1.0"?><!DOCTYPE t [<!ELEMENT topology ANY>]><topology/>', "refused"),
    "undeclared entity": ("<topology>&nope;</topology>", "not well-formed"),
    "malformed": ('<topology><object type="PCIDev"></topology>', "not well-formed"),
    "not hwloc": ("<html><body/></html>", "not an hwloc topology"),
    "no pci": (HEAD + '<topology><object type="Machine"/></topology>', "no PCI objects"),
    "deep nesting": ("<topology>" + "<object>" * 600 + "</object>" * 600 + "</topology>", "nested deeper"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_XML))
def test_hostile_or_malformed_xml_is_refused_with_one_line(case: str) -> None:
    text, why = HOSTILE_XML[case]
    with pytest.raises(SourceError) as exc:
        parse_hwloc(text.encode(), name="x", where="x.xml")
    assert why in str(exc.value) and "\n" not in str(exc.value)


def test_cli_hwloc_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "m.xml"
    f.write_text(_doc())
    assert main(["matrix", "--hwloc", str(f), "--json", "--schema", "1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["machine"] == "m" and all(not d["acs_known"] for d in doc["devices"])
    below = [p for p in doc["pairs"] if {p["provider"], p["client"]} == {"0000:03:00.0", "0000:04:00.0"}]
    assert len(below) == 2 and all(p["certain"] is False and p["unknown_ports"] for p in below)
    assert main(["topo", "--hwloc", str(tmp_path / "missing.xml")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "missing.xml" in err
    with pytest.raises(SourceError, match="not a regular file"):
        read_hwloc(tmp_path)


def test_real_hwloc_exports(shared_hwloc: Path) -> None:
    files = sorted(shared_hwloc.glob("*.xml"))
    assert files
    for f in files:
        t = read_hwloc(f)
        assert t.devices and t.host_bridges and all(not d.acs_known for d in t.devices)
        m = compute_matrix(t, include_bridges=True)
        depth = np.array([len(t.chain(b)) for b in m.bdfs])
        common = m.distance < depth[:, None] + depth[None, :]
        # uncertain: the pairs below a common bridge (or a function with itself), whose ports' ACS
        # hwloc does not give, and, unless the CPU alone decides, every pair through the root
        # complex of a host bridge whose device hwloc does not list: the whitelist check is a guess
        unk = np.array([not t.host_bridge(t[b].host_bridge).host_bridge_dev_known for b in m.bdfs])
        hb_guess = ~common & (unk[:, None] | unk[None, :]) & (not platform.cpu_supports_p2pdma(t))
        assert np.array_equal(~m.certain, common | hb_guess), f.name
        for i, j in list(zip(*np.nonzero(~common), strict=True))[:50]:
            v = m.verdict(int(i), int(j))
            assert (HB_UNKNOWN in v.unknown) == bool(hb_guess[i, j]) and not v.unknown_ports, (f.name, v.reason)
        for i, j in list(zip(*np.nonzero(common), strict=True))[:200]:
            v = m.verdict(int(i), int(j))
            path_ports = set(v.path)
            assert not v.certain and set(v.unknown_ports) == path_ports, (f.name, v.provider, v.client)


def test_many_vfs_behind_four_switch_levels(shared_hwloc: Path) -> None:
    t = read_hwloc(shared_hwloc / "16intel64-manyVFs.xml")
    nic = t["0000:0b:00.0"]
    chain = [d.bdf for d in t.chain(nic.bdf)]
    assert chain == ["0000:0b:00.0", "0000:0a:00.0", "0000:09:00.0", "0000:07:01.0", "0000:06:00.0", "0000:00:03.0"]
    v = calc_map_type_and_dist(t, "0000:0b:00.1", "0000:0c:00.1")
    assert v.map_type == MapType.BUS_ADDR and not v.certain and v.common == "0000:09:00.0"


def test_xml_and_sysfs_tarball_of_one_machine_agree(shared_hwloc: Path) -> None:
    x = read_hwloc(shared_hwloc / "40intel64-2g2n4c+pcilocality.xml")
    s = load_capture(shared_hwloc / "40intel64-2g2n4c+pcilocality.tar.bz2")
    assert [d.bdf for d in x.devices] == [d.bdf for d in s.devices]
    assert [(d.parent, d.host_bridge, d.vendor, d.device, d.class_code) for d in x.devices] == [
        (d.parent, d.host_bridge, d.vendor, d.device, d.class_code) for d in s.devices]
    for profile in ("latest", "classic"):
        a, b = compute_matrix(x, profile, include_bridges=True), compute_matrix(s, profile, include_bridges=True)
        assert a.bdfs == b.bdfs
        assert np.array_equal(a.map_type, b.map_type) and np.array_equal(a.distance, b.distance)
        # the XML cannot show whether pci0000:40 has a devfn 00.0 (hwloc drops such functions), the
        # sysfs tree can: only pairs through that host bridge lose certainty, nothing gains it
        assert not (a.certain & ~b.certain).any()
        differ = np.argwhere(a.certain != b.certain)
        assert len(differ) > 0
        for i, j in differ[:100]:
            v = a.verdict(int(i), int(j))
            assert HB_UNKNOWN in v.unknown and "pci0000:40" in {x[v.provider].host_bridge, x[v.client].host_bridge}
