"""The readers on real machines' files (../shared/data/real and the hwloc XML of ../shared/data/hwloc):
each parses; what the file does not hold (a host bridge device, ACS) is marked unknown, never
stood in for; the N1SDP verdicts follow its ACSCtl lines; NVLink, OS names, repeated NCCL bus ids,
CPU vendors, CardBus bridges; hostile XML encodings give one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from p2pdma.errors import SourceError
from p2pdma.p2p.decide import MapType, calc_map_type_and_dist
from p2pdma.p2p.matrix import compute_matrix
from p2pdma.p2p.notes import NVLINK_NOTE, pair_notes
from p2pdma.pci import config as cfg
from p2pdma.pci.topology import Topology
from p2pdma.sources import open_machine
from p2pdma.sources.hwloc import parse_hwloc, read_hwloc
from p2pdma.sources.lspci import read_lspci, topology_from_dump
from p2pdma.sources.nccl import parse_nccl_xml, read_nccl_xml

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
REAL = DATA / "real"
KINDS = {"lspci": "lspci", "nccl": "nccl_xml", "hwloc": "hwloc"}
SKIP = f"reference data not present at {REAL} (a user's clone has no ../shared)"


def _files() -> list[Path]:
    if not REAL.is_dir():
        return []
    out = [p for sub in KINDS for p in sorted((REAL / sub).glob("*")) if p.is_file()]
    return out + sorted((DATA / "hwloc").glob("*.xml"))


FILES = _files()
PARAMS = [pytest.param(p, id=p.name) for p in FILES] or [pytest.param(None, marks=pytest.mark.skip(reason=SKIP))]


def _open(path: Path) -> Topology:
    kind = KINDS.get(path.parent.name, "hwloc")
    return open_machine(kind, path)


def _need(rel: str) -> Path:
    p = DATA / rel
    if not p.is_file():
        pytest.skip(SKIP)
    return p


@pytest.mark.parametrize("path", PARAMS)
def test_each_file_parses_and_marks_missing_host_bridge_devices(path: Path) -> None:
    topo = _open(path)
    assert topo.devices and topo.host_bridges
    m = compute_matrix(topo)
    assert m.map_type.shape == (len(topo.endpoints), len(topo.endpoints))
    kind = path.parent.name
    for hb in topo.host_bridges:
        if hb.host_dev is not None:
            dev = topo[hb.host_dev]
            # the device the whitelist reads is a real function of the file at devfn 00.0 of the root
            # bus, never a synthetic NCCL port or a root port standing in for a dropped 00.0
            assert hb.host_bridge_dev_known and dev.domain < 0x10000 and dev.devfn == 0 and dev.bus == hb.bus
        else:
            assert not hb.host_bridge_dev_known or kind == "lspci" and hb.root_devices == ()
        if kind == "nccl":
            assert hb.host_dev is None and not hb.host_bridge_dev_known
        if kind == "hwloc" or path.parent == DATA / "hwloc":
            has_zero = any(topo[b].devfn == 0 and topo[b].bus == hb.bus for b in hb.root_devices)
            assert hb.host_bridge_dev_known == has_zero, hb.name
    assert not any("SR-IOV" in w for w in topo.warnings)


@pytest.mark.parametrize("path", PARAMS)
def test_no_verdict_is_certain_about_acs_the_file_lacks(path: Path) -> None:
    """Every port whose ACS decides a verdict (a common upstream bridge) must have its ACS in the file
    for the verdict to be certain; pairs checked on the first 24 endpoints to stay fast."""
    topo = _open(path)
    eps = [d.bdf for d in topo.endpoints][:24]
    for p in eps:
        for c in eps:
            v = calc_map_type_and_dist(topo, p, c)
            if v.common is None:
                continue
            lacking = [x for x in v.path if x in topo and not topo[x].acs_known]
            assert v.certain == (not lacking), (p, c, lacking)
            assert set(v.unknown_ports) == set(lacking)


def _n1sdp() -> tuple[Path, str]:
    p = _need("real/lspci/n1sdp-plx8749-lspci-vvxxx.txt")
    return p, p.read_text()


def _acsctl_by_function(text: str) -> dict[str, int]:
    """The ACSCtl lines of the file, read here independently of the reader: BDF -> control bits."""
    out: dict[str, int] = {}
    cur = None
    bits = {"SrcValid": 0x1, "TransBlk": 0x2, "ReqRedir": 0x4, "CmpltRedir": 0x8, "UpstreamFwd": 0x10,
            "EgressCtrl": 0x20, "DirectTrans": 0x40}
    for line in text.splitlines():
        m = re.match(r"^([0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]) ", line)
        if m:
            cur = m[1]
        elif "ACSCtl:" in line and cur:
            out[cur] = sum(b for name, b in bits.items() if f"{name}+" in line)
    return out


# By hand from the file: the PLX PEX 8749 upstream port 01:00.0 (no ACS) below the Arm root port
# 00:00.0 (no ACS), its four DMA functions 01:00.1-4 on bus 01, and downstream ports 02:12.0 (SATA
# 06:00.0), 02:13.0 (RTL8111 07:00.0), 02:14.0 (xHCI 08:00.0), each with ACSCtl SV+ RR+ CR+ UF+ EC-.
# RR/CR redirect every peer request entering those ports, so any path through one is NOT_SUPPORTED
# (the Arm host bridge 13b5:0100 is not whitelisted); the DMA functions meet at the root port.
DSP = {"0000:06:00.0": "0000:02:12.0", "0000:07:00.0": "0000:02:13.0", "0000:08:00.0": "0000:02:14.0"}
DMA = ("0000:01:00.1", "0000:01:00.2", "0000:01:00.3", "0000:01:00.4")


def _n1sdp_expected(p: str, c: str) -> tuple[MapType, int, str, tuple[str, ...]]:
    """(map type, distance, common upstream, ACS ports) for provider p, client c."""
    if p == c:
        return MapType.BUS_ADDR, 0, p, ()
    if p in DMA and c in DMA:
        return MapType.BUS_ADDR, 2, "0000:00:00.0", ()
    if p in DSP and c in DSP:
        return MapType.NOT_SUPPORTED, 4, "0000:01:00.0", (DSP[p], DSP[c])
    ports = tuple(DSP[x] for x in (p, c) if x in DSP)
    return MapType.NOT_SUPPORTED, 4, "0000:00:00.0", ports


def test_n1sdp_verdicts_follow_its_acsctl_lines() -> None:
    path, text = _n1sdp()
    topo = read_lspci(path)
    ctl = _acsctl_by_function(text)
    assert set(ctl) == set(DSP.values()) | {"0000:02:08.0", "0000:02:10.0", "0000:02:11.0"}
    assert set(ctl.values()) == {0x1D}
    for bdf, value in ctl.items():
        d = topo[bdf]
        assert d.acs_known and d.acs is not None and d.acs.ctrl == value
        assert d.port_type == cfg.PCI_EXP_TYPE_DOWNSTREAM
    # every other function: lspci (as root) listed its extended capabilities and none is ACS
    assert all(d.acs_known and d.acs is None for d in topo.devices if d.bdf not in ctl)
    assert not any("run as root" in w or "differs" in w for w in topo.warnings)
    eps = [d.bdf for d in topo.endpoints]
    assert sorted(eps) == sorted([*DMA, *DSP])
    for p in eps:
        for c in eps:
            v = calc_map_type_and_dist(topo, p, c)
            mt, dist, common, ports = _n1sdp_expected(p, c)
            assert (v.map_type, v.distance, v.common, v.acs_ports) == (mt, dist, common, ports), (p, c)
            assert v.unknown_ports == ()
    counts = compute_matrix(topo).counts()
    assert counts == {"BUS_ADDR": 19, "THRU_HOST_BRIDGE": 0, "NOT_SUPPORTED": 30}


def test_lspci_vv_only_bom_and_crlf_read_the_same() -> None:
    path, text = _n1sdp()
    full = read_lspci(path)
    no_hex = "\n".join(line for line in text.splitlines() if not re.match(r"^[0-9a-f]{2,3}: ", line))
    for variant in (no_hex, "\ufeff" + text, text.replace("\n", "\r\n")):
        t = topology_from_dump(variant, name="v")
        assert [(d.bdf, d.parent, d.acs_known, d.acs.ctrl if d.acs else None) for d in t.devices] == [
            (d.bdf, d.parent, d.acs_known, d.acs.ctrl if d.acs else None) for d in full.devices
        ]
        for p, c in (("0000:06:00.0", "0000:07:00.0"), ("0000:01:00.1", "0000:01:00.2")):
            assert calc_map_type_and_dist(t, p, c).map_type == calc_map_type_and_dist(full, p, c).map_type
    vv = topology_from_dump(no_hex, name="vv")
    # -vv without -nn: no IDs for the host bridge device, so the whitelist cannot be read
    assert all(not hb.host_bridge_dev_known for hb in vv.host_bridges)
    assert vv["0000:02:12.0"].port_number == 18 and vv["0000:00:00.0"].max_width == 16


def test_lspci_root_and_non_root_dumps_say_different_things() -> None:
    _, text = _n1sdp()
    # hex only (no -vv): 256 bytes, no claim that the dump was not made as root
    hex_only = "\n".join(line for line in text.splitlines() if not line.startswith("\t"))
    t = topology_from_dump(hex_only, name="x")
    note = next(w for w in t.warnings if w.startswith("ACS unknown"))
    assert "256 bytes" in note and "without root" not in note
    # one DSP's ACSCtl line dropped (as -v prints it): root-made, the rest still known from the text
    lines = text.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("0000:02:13.0"))
    j = next(k for k in range(i, len(lines)) if "ACSCtl:" in lines[k])
    t = topology_from_dump("\n".join(lines[:j] + lines[j + 1:]), name="x")
    assert not t["0000:02:13.0"].acs_known and t["0000:02:12.0"].acs_known
    note = next(w for w in t.warnings if w.startswith("ACS unknown for 1 of"))
    assert "made as root but its hex stops at 256 bytes" in note
    v = calc_map_type_and_dist(t, "0000:06:00.0", "0000:07:00.0")
    assert not v.certain and "0000:02:13.0" in v.unknown_ports
    # made without root: lspci prints <access denied> instead of the capabilities
    denied = re.sub(r"(?m)^(0000:02:1[234]\.0 .*)$", r"\1\n\tCapabilities: <access denied>", hex_only)
    t = topology_from_dump(denied, name="x")
    note = next(w for w in t.warnings if w.startswith("ACS unknown"))
    assert "without root" in note and "as root" in note


def test_lspci_text_and_hex_disagreeing_is_named() -> None:
    p = _need("real/lspci/pciutils-cap-exp-lnkcap2.txt")
    text = p.read_text()
    assert not any("differs" in w for w in read_lspci(p).warnings)
    bad = text.replace("ACSCtl:\tSrcValid- TransBlk- ReqRedir-", "ACSCtl:\tSrcValid- TransBlk- ReqRedir+", 1)
    assert bad != text
    t = topology_from_dump(bad, name="bad")
    assert any(w.startswith("0000:00:1c.0: ACSCtl in the text (RR) differs from the hex (-)") for w in t.warnings)
    assert t["0000:00:1c.0"].acs is not None and t["0000:00:1c.0"].acs.ctrl == 0  # the hex is used


def test_cardbus_bridge_is_a_parent() -> None:
    t = read_lspci(_need("real/lspci/pciutils-tree-fujitsu-p8010.txt"))
    cb = t["0000:1c:03.0"]
    assert cb.header_type == cfg.HEADER_CARDBUS and cb.is_bridge
    assert t["0000:1d:00.0"].parent == "0000:1c:03.0"
    assert not any("no bridge in the dump has bus" in w for w in t.warnings)


def test_filtered_lspci_dump_does_not_use_a_root_port_as_host_bridge_device() -> None:
    t = read_lspci(_need("real/lspci/pciutils-cap-aer-root.txt"))
    hb = t.host_bridge("pci0000:00")
    assert hb.host_dev is None and not hb.host_bridge_dev_known
    assert any("no function 00.0 on its root bus (the first shown is 0000:00:02.0)" in w for w in t.warnings)


@pytest.mark.parametrize(
    ("name", "bridges"),
    [("dshcherb-2rc-dual-gpu-lstopo.xml", 2), ("hwloc-32em64t-2n8c2t-pci-wholeio.xml", 2),
     ("dshcherb-3rc-dual-cpu-fwts-lstopo.xml", 1)],
)
def test_hwloc_without_00_0_has_no_stand_in(name: str, bridges: int) -> None:
    t = read_hwloc(_need(f"real/hwloc/{name}"))
    missing = [hb for hb in t.host_bridges if not hb.host_bridge_dev_known]
    assert len(missing) >= bridges and all(hb.host_dev is None for hb in missing)
    assert sum("host bridge device not in this input" in w for w in t.warnings) == len(missing)
    stand_ins = {f"at {b}" for hb in missing for b in hb.root_devices}
    for e in t.endpoints:
        for f in t.endpoints:
            v = calc_map_type_and_dist(t, e.bdf, f.bdf)
            if v.common is None:
                assert not any(x in v.reason for x in stand_ins), v.reason


def test_dgx2_gpu_pairs_carry_the_nvlink_note() -> None:
    t = read_hwloc(_need("hwloc/nvidiaDGX2.xml"))
    gpus = [d.bdf for d in t.endpoints if (d.vendor, d.device) == (0x10DE, 0x1DB8)]
    assert len(gpus) == 16
    assert len(t.nvlinks) == 16 * 15
    for p in gpus:
        for c in gpus:
            assert pair_notes(t, p, c) == ([NVLINK_NOTE] if p != c else [])
    other = [d.bdf for d in t.endpoints if d.bdf not in gpus]
    assert other and all(pair_notes(t, gpus[0], x) == [] and pair_notes(t, x, gpus[0]) == [] for x in other)
    assert t[gpus[0]].os_names == ("nvml0",)


def test_power8_nvlink_pairs_and_os_names() -> None:
    t = read_hwloc(_need("real/hwloc/hwloc-power8gpudistances.xml"))
    assert t.nvlinks == {("0002:01:00.0", "0003:01:00.0"), ("0003:01:00.0", "0002:01:00.0"),
                         ("000a:01:00.0", "000b:01:00.0"), ("000b:01:00.0", "000a:01:00.0")}
    assert t["0002:01:00.0"].os_names == ("cuda0", "opencl0d0", "nvml0")
    assert t.cpu is not None and t.cpu.vendor == "IBM POWER"
    t = read_hwloc(_need("hwloc/24em64t-2n6c2t-pci.xml"))
    assert set(t["0000:05:00.0"].os_names) == {"eth2", "ib0", "mlx4_0"}


def test_nccl_nvlink_and_net_names() -> None:
    t = read_nccl_xml(_need("real/nccl/ibm-gx3d-h100-topo.xml"))
    gpus = sorted({a for a, _ in t.nvlinks})
    assert len(gpus) == 8 and len(t.nvlinks) == 8 * 7  # all eight H100 on the NVSwitch
    assert pair_notes(t, gpus[0], gpus[1]) == [NVLINK_NOTE]
    t = read_nccl_xml(_need("real/nccl/nccl-issue2397-icelake-2xA100-topo.xml"))
    assert t["0000:16:00.0"].os_names == ("mlx5_0", "mlx5_1")
    assert t.nvlinks == frozenset()
    assert t.cpu is not None and (t.cpu.vendor, t.cpu.family, t.cpu.model) == ("GenuineIntel", 6, 106)


def test_nccl_repeated_bus_ids_merge_like_nccl() -> None:
    p = _need("real/nccl/rccl-topo_4p4h.xml")
    text = p.read_text()
    assert text.count('busid="0000:c5:00.0"') == 8
    gpus_in_file = set(re.findall(r'busid="([0-9a-f:.]+)" class="0x038000"', text))
    t = read_nccl_xml(p)
    assert {d.bdf for d in t.endpoints if d.class_code == 0x038000} == gpus_in_file
    below = [d for d in t.devices if d.bdf in gpus_in_file and "0000:c5:00.0" in [x.bdf for x in t.chain(d.bdf)]]
    assert len(below) == 8  # the children of every copy hang below the one function
    assert any(w.startswith("0000:c5:00.0: listed 8 times in the XML; merged") for w in t.warnings)


NCCL_CPU = ('<system version="1"><cpu numaid="0" arch="x86_64" vendor="{v}" familyid="{f}" modelid="1">'
            '<pci busid="0000:01:00.0" class="0x030200" vendor="0x10de" device="0x20b5"/></cpu></system>')


@pytest.mark.parametrize(
    ("written", "family", "vendor", "warned"),
    [("GenuineIntel", "6", "GenuineIntel", False), ("AuthenticAMD", "175", "AuthenticAMD", False),
     ("HygonGenuine", "159", "HygonGenuine", False), ("AMD", "159", "HygonGenuine", True),
     ("AMD", "175", "AuthenticAMD", True), ("Zorblax", "6", "Zorblax", True)],
)
def test_nccl_cpu_vendor_strings(written: str, family: str, vendor: str, warned: bool) -> None:
    t = parse_nccl_xml(NCCL_CPU.format(v=written, f=family).encode(), name="cpu")
    assert t.cpu is not None and t.cpu.vendor == vendor
    assert any("CPU vendor" in w and repr(written)[1:-1] in w for w in t.warnings) == warned


def test_hygon_file_is_not_read_as_amd() -> None:
    t = read_nccl_xml(_need("real/nccl/rccl-issue1185-hygon-dcu8-topo.xml"))
    assert t.cpu is not None and (t.cpu.vendor, t.cpu.family) == ("HygonGenuine", 0x18)


@pytest.mark.parametrize("enc", ["x-unknown", "ebcdic-cp-us", "utf-32"])
@pytest.mark.parametrize("root", ["topology", "system"])
def test_xml_with_an_unknown_or_wrong_encoding_is_one_line(enc: str, root: str) -> None:
    data = f'<?xml version="1.0" encoding="{enc}"?><{root}/>'.encode()
    parse = parse_hwloc if root == "topology" else parse_nccl_xml
    with pytest.raises(SourceError) as info:
        parse(data, name="x")
    assert "\n" not in str(info.value) and "XML" in str(info.value)


VV_SWITCH = """\
00:00.0 PCI bridge [0604]: Intel Corporation Device [8086:2030] (rev 04) (prog-if 00 [Normal decode])
\tBus: primary=00, secondary=01, subordinate=03, sec-latency=0
\tCapabilities: [90] Express (v2) Root Port (Slot-), MSI 00
\t\tLnkCap:\tPort #0, Speed 8GT/s, Width x16, ASPM L1
\tCapabilities: [100 v1] Advanced Error Reporting
01:00.0 PCI bridge [0604]: PLX Technology, Inc. Device [10b5:8747] (rev ca)
\tBus: primary=01, secondary=02, subordinate=03, sec-latency=0
\tCapabilities: [68] Express (v2) Upstream Port, MSI 00
\tCapabilities: [100 v1] Device Serial Number 00-00-00-00-00-00-00-00
02:08.0 PCI bridge [0604]: PLX Technology, Inc. Device [10b5:8747] (rev ca)
\tBus: primary=02, secondary=03, subordinate=03, sec-latency=0
\tCapabilities: [68] Express (v2) Downstream Port (Slot+), MSI 00
\t\tLnkCap:\tPort #8, Speed 8GT/s, Width x16, ASPM L1
\tCapabilities: [148 v1] Access Control Services
\t\tACSCap:\tSrcValid+ TransBlk+ ReqRedir+ CmpltRedir+ UpstreamFwd+ EgressCtrl+ DirectTrans+ ECVSize=32
\t\tACSCtl:\tSrcValid+ TransBlk- ReqRedir- CmpltRedir- UpstreamFwd+ EgressCtrl{ec} DirectTrans-
03:00.0 3D controller [0302]: NVIDIA Corporation Device [10de:2330] (rev a1)
\tCapabilities: [68] Express (v2) Endpoint, MSI 00
\tCapabilities: [100 v1] Advanced Error Reporting
"""


@pytest.mark.parametrize("ec", ["+", "-"])
def test_vv_text_acs_with_egress_control(ec: str) -> None:
    """A -vv-only (-nn) dump: ACS from the text; with EgressCtrl+ the vector (never printed) decides,
    so that port's ACS stays unknown and the note says why; the vector size is read where shown."""
    t = topology_from_dump(VV_SWITCH.format(ec=ec), name="vv")
    dsp = t["0000:02:08.0"]
    assert dsp.acs is not None and dsp.acs.ctrl == (0x11 | (0x20 if ec == "+" else 0))
    assert cfg.egress_vector_bits(dsp.acs.cap) == 32 and dsp.port_number == 8
    assert dsp.acs_known == (ec == "-")
    assert t["0000:03:00.0"].parent == "0000:02:08.0" and t["0000:00:00.0"].acs_known
    hb = t.host_bridge("pci0000:00")
    assert hb.host_dev == "0000:00:00.0" and hb.host_bridge_dev_known  # -nn gives the IDs: 8086:2030
    assert (t["0000:00:00.0"].vendor, t["0000:00:00.0"].device) == (0x8086, 0x2030)
    notes = [w for w in t.warnings if w.startswith("ACS unknown")]
    if ec == "+":
        assert len(notes) == 1 and "Egress Control is on at 0000:02:08.0" in notes[0]
    else:
        assert notes == []


def _decision_reads_host_bridge_dev_known() -> bool:
    import inspect

    from p2pdma.p2p import decide, platform

    return any("host_bridge_dev_known" in inspect.getsource(m) for m in (decide, platform))


def test_no_verdict_is_certain_about_a_host_bridge_device_the_file_lacks() -> None:
    """A verdict the host bridge decides (no common bridge or ACS redirect, not the AMD Zen CPU rule)
    on a host bridge whose device the file lacks must be certain: false, naming that fact."""
    if not FILES:
        pytest.skip(SKIP)
    offenders = []
    for path in FILES:
        topo = _open(path)
        eps = [d.bdf for d in topo.endpoints][:24]
        for p in eps:
            for c in eps:
                v = calc_map_type_and_dist(topo, p, c)
                if v.map_type == MapType.BUS_ADDR or v.via == "cpu":
                    continue
                hbs = {topo[p].host_bridge, topo[c].host_bridge}
                if any(not topo.host_bridge(h).host_bridge_dev_known for h in hbs) and v.certain:
                    offenders.append((path.name, p, c))
    assert offenders == []


def test_hostile_lspci_text_lines_stay_fast() -> None:
    """Long header and detail lines (spaces, brackets) are cut before matching: bounded time."""
    import time

    text = ("00:00.0 " + " " * 200_000 + "\n\t" + "[1234:5678] " * 20_000 + "\n"
            "00:01.0 PCI bridge" + "[0604]" * 30_000 + ": x\n\tLnkCap:\t" + "Speed " * 30_000 + "\n")
    t0 = time.perf_counter()
    t = topology_from_dump(text, name="hostile")
    assert time.perf_counter() - t0 < 2.0
    assert [d.bdf for d in t.devices] == ["0000:00:00.0", "0000:00:01.0"]
    assert t["0000:00:00.0"].config_size == 0 and not t["0000:00:00.0"].acs_known


def test_huge_nvlink_fabrics_are_bounded() -> None:
    """A file claiming thousands of GPUs on one NVSwitch does not build millions of pairs."""
    import time

    gpu = ('<pci busid="0000:{b:02x}:{d:02x}.0" class="0x030200" vendor="0x10de" device="0x2330">'
           '<gpu dev="0" sm="90" rank="0"><nvlink target="0000:00:00.0" count="18" tclass="0x068000"/></gpu></pci>')
    body = "".join(gpu.format(b=1 + i // 32, d=i % 32) for i in range(1100))
    data = f'<system version="1"><cpu numaid="0" vendor="GenuineIntel" familyid="6" modelid="143">{body}</cpu></system>'
    t0 = time.perf_counter()
    t = parse_nccl_xml(data.encode(), name="huge")
    assert time.perf_counter() - t0 < 10
    assert t.nvlinks == frozenset() and any("more than 1024" in w for w in t.warnings)
    body = "".join(gpu.format(b=1 + i // 32, d=i % 32) for i in range(64))
    t = parse_nccl_xml(data.replace(data[data.index("<pci"):data.index("</cpu>")], body).encode(), name="ok")
    assert len(t.nvlinks) == 64 * 63


@pytest.mark.parametrize("path", PARAMS)
def test_uncertain_pairs_are_counted_by_the_fact_the_file_lacks(path: Path) -> None:
    """The count line's split of the uncertain pairs (ACS unknown / host bridge device not in the
    input) adds up and agrees with each pair's own verdict (first 16 endpoints)."""
    from p2pdma.cli.common import counts_line
    from p2pdma.p2p.decide import HB_UNKNOWN
    from p2pdma.report.documents import pair_counts, uncertain_why

    topo = _open(path)
    m = compute_matrix(topo)
    why, counts = uncertain_why(m), pair_counts(m)
    assert why["acs"] + why["host_bridge"] == counts["uncertain"]
    line = counts_line(counts, why)
    assert (f"host bridge device not in this input {why['host_bridge']}" in line) == bool(why["host_bridge"])
    for i, p in enumerate(m.bdfs[:16]):
        for j, c in enumerate(m.bdfs[:16]):
            v = m.verdict(i, j)
            if p == c or v.certain:
                continue
            if v.common is not None:  # below a common bridge: only ACS can be what is missing
                assert v.unknown_ports and HB_UNKNOWN not in v.unknown, (p, c)
            else:
                assert HB_UNKNOWN in v.unknown, (p, c)
