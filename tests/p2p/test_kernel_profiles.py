"""Kernel profiles (p2p/kernels.py): hand-derived verdicts on the bundled examples where 6.1, 7.2 and
pci-next differ (whitelist rows), their exact log strings, the release resolver, and the matrix equal
to the per-pair function under every profile."""

from __future__ import annotations

import pytest

from p2pdma import examples
from p2pdma.p2p.decide import MapType, calc_map_type_and_dist
from p2pdma.p2p.kernels import PROFILES, get_profile
from p2pdma.p2p.matrix import compute_matrix

NS, THRU = MapType.NOT_SUPPORTED, MapType.THRU_HOST_BRIDGE


@pytest.mark.parametrize(
    ("example", "p", "c", "dist", "want"),
    [
        # 10de:2f95 only in pci-next (flags 0)
        ("grace-hostbridge", "0000:01:00.0", "0000:02:00.0", 4, {"6.1": NS, "7.2": NS, "pci-next": THRU}),
        # DSA 8086:0b25 first on its root bus: from 7.2's table on; 00:00.0 8086:09a2 in all
        ("spr-dsa-hostbridge", "0000:01:00.0", "0000:e7:00.0", 3, {"6.1": NS, "7.2": THRU, "pci-next": THRU}),
        ("spr-dsa-hostbridge", "0000:00:00.0", "0000:01:00.0", 3, {"6.1": THRU, "7.2": THRU, "pci-next": THRU}),
        # 1d17:1003 REQ_SAME_HOST_BRIDGE in pci-next: within one host bridge only
        ("zhaoxin-hostbridge", "0000:01:00.0", "0000:02:00.0", 4, {"6.1": NS, "7.2": NS, "pci-next": THRU}),
        ("zhaoxin-hostbridge", "0000:01:00.0", "0000:81:00.0", 4, {"6.1": NS, "7.2": NS, "pci-next": NS}),
    ],
)
def test_profiles_differ_on_whitelist_rows(example: str, p: str, c: str, dist: int, want: dict[str, MapType]) -> None:
    topo = examples.load(example)
    for profile, mt in want.items():
        for a, b in ((p, c), (c, p)):
            v = calc_map_type_and_dist(topo, a, b, profile)
            assert (v.map_type, v.distance, v.certain) == (mt, dist, True), (profile, a, b)


def test_log_strings_per_profile() -> None:
    topo = examples.load("grace-hostbridge")
    p, c = "0000:01:00.0", "0000:02:00.0"
    no_path = (f"pci {c}: cannot be used for peer-to-peer DMA as the client and provider ({p})"
               " do not share an upstream bridge or whitelisted host bridge")
    # 7.2 warns about the whitelist only after an ACS redirect; no ACS decided here
    assert calc_map_type_and_dist(topo, p, c, "7.2").kernel_log == (no_path,)
    # 2f95 is listed in pci-next: no line at all
    assert calc_map_type_and_dist(topo, p, c, "pci-next").kernel_log == ()
    z = examples.load("zhaoxin-hostbridge")
    got = calc_map_type_and_dist(z, "0000:01:00.0", "0000:02:00.0", "7.2").kernel_log
    assert got == (no_path.replace(p, "0000:01:00.0").replace(c, "0000:02:00.0"),)
    u = examples.load("unlisted-hostbridge")
    # the PCI tree at cd2698d76c31 passes warn = acs_redirects to host_bridge_whitelist(), as 6.1 and
    # 7.2 do: without an ACS redirect no profile names the unlisted host bridge
    for name in ("6.1", "7.2", "pci-next"):
        log = calc_map_type_and_dist(u, "0000:01:00.0", "0000:06:00.0", name).kernel_log
        assert "Host bridge not in" not in " ".join(log) and "cannot be used for peer-to-peer DMA" in log[-1]


def test_acs_list_cut_at_the_128_byte_buffer() -> None:
    prof = get_profile("pci-next")
    bdfs = [f"0000:{i:02x}:00.0" for i in range(12)]  # 12 x 13 bytes = 156 > 127
    out = prof.acs_list(bdfs)
    assert len(out) == 127 and out.startswith("0000:00:00.0;0000:01:00.0;")
    assert prof.acs_list(bdfs[:2]) == "0000:00:00.0;0000:01:00.0"


def test_whitelists_are_the_trees_tables() -> None:
    assert len(PROFILES["6.1"].whitelist) == 10
    rows = {k: {(e.vendor, e.device) for e in p.whitelist} for k, p in PROFILES.items()}
    assert rows["5.10"] == rows["5.15"] < rows["6.1"] < rows["7.2"] < rows["7.3"] < rows["pci-next"]
    assert len(PROFILES["7.2"].whitelist) == 21 and len(PROFILES["pci-next"].whitelist) == 30
    # 5.4: AMD Zen 1022:1450 and the four Xeon E5/E7 rows (same host bridge only)
    assert [(e.vendor, e.device, e.flags) for e in PROFILES["5.4"].whitelist] == [
        (0x1022, 0x1450, 0), (0x8086, 0x3C00, 1), (0x8086, 0x3C01, 1), (0x8086, 0x2F00, 1), (0x8086, 0x2F01, 1)]
    assert rows["5.10"] - rows["5.4"] == {(0x8086, d) for d in (0x2030, 0x2031, 0x2032, 0x2033, 0x2020)}
    assert rows["6.1"] - rows["5.15"] == {(0x8086, 0x09A2)}
    assert rows["7.3"] - rows["7.2"] == {(0x10DE, d) for d in (0x2F95, 0x2F96, 0x2F97, 0x2F98)}
    old = [PROFILES[k] for k in ("5.4", "5.10", "5.15")]
    assert [p.host_bridge_root_port for p in old] == [False, False, False]
    assert [(p.cpu_amd_zen, p.whitelist_warn, p.acs_list_buf) for p in old] == [
        (False, False, 4096), (True, False, 4096), (True, True, 128)]


# Verdicts where consecutive mainline profiles differ, on the bundled machines (both directions).
@pytest.mark.parametrize(
    ("example", "p", "c", "dist", "want"),
    [
        # 00:00.0 is 8086:09a2: listed from 5.18 (6.1 profile) on
        ("spr-dsa-hostbridge", "0000:00:00.0", "0000:01:00.0", 3,
         {"5.4": NS, "5.10": NS, "5.15": NS, "6.1": THRU, "7.2": THRU, "7.3": THRU}),
        # 10de:2f95 listed from 7.3 on
        ("grace-hostbridge", "0000:01:00.0", "0000:02:00.0", 4,
         {"5.4": NS, "5.10": NS, "5.15": NS, "6.1": NS, "7.2": NS, "7.3": THRU}),
        # AMD family 0x19, host bridge 1022:14a4 unlisted: 5.4 has no cpu_supports_p2pdma()
        ("amd-zen", "0000:01:00.0", "0000:02:00.0", 4,
         {"5.4": NS, "5.10": THRU, "5.15": THRU, "6.1": THRU, "7.3": THRU}),
        # Skylake-E host bridge 00:00.0 8086:2020: listed from 5.10's table on, not in 5.4's
        ("intel-2socket", "0000:01:00.0", "0000:02:00.0", 4,
         {"5.4": NS, "5.10": THRU, "5.15": THRU, "6.1": THRU}),
    ],
)
def test_mainline_profiles_differ(example: str, p: str, c: str, dist: int, want: dict[str, MapType]) -> None:
    topo = examples.load(example)
    for profile, mt in want.items():
        for a, b in ((p, c), (c, p)):
            v = calc_map_type_and_dist(topo, a, b, profile)
            assert (v.map_type, v.distance) == (mt, dist), (profile, a, b)


_SKYLAKE_RP = """
name: skylake-rp
cpu: {vendor: GenuineIntel, family: 6, model: 0x55}
host_bridges:
  - name: pci0000:00
    devices:
      - bdf: "0000:00:02.0"
        id: "8086:2030"
        class: 0x060400
        port: root-port
        children:
          - {bdf: "0000:01:00.0", id: "10de:20b5", class: 0x030200, port: endpoint}
      - bdf: "0000:00:03.0"
        id: "8086:2031"
        class: 0x060400
        port: root-port
        children:
          - {bdf: "0000:02:00.0", id: "10de:20b5", class: 0x030200, port: endpoint}
"""


def test_root_port_host_bridge_dev_from_5_19() -> None:
    """1af7c26c59eb (5.19): pci_host_bridge_dev() takes a Root Port at any devfn; 5.15 wanted devfn 00.0."""
    from p2pdma.sources import safeload
    from p2pdma.sources.spec import parse_spec

    topo = parse_spec(safeload.loads(_SKYLAKE_RP, "t", kind="spec"), where="t").topology(source="t")
    a, b = "0000:01:00.0", "0000:02:00.0"
    assert calc_map_type_and_dist(topo, a, b, "6.1").map_type == THRU
    for old in ("5.10", "5.15"):
        v = calc_map_type_and_dist(topo, a, b, old)
        assert v.map_type == NS and "no devfn 00.0 device first" in v.reason, (old, v.reason)
    for name in ("5.15", "6.1"):
        m = compute_matrix(topo, name)
        i, j = m.bdfs.index(a), m.bdfs.index(b)
        assert MapType(int(m.map_type[i, j])) == calc_map_type_and_dist(topo, a, b, name).map_type


_UNLISTED_ACS = """
name: unlisted-acs
cpu: {vendor: GenuineIntel, family: 6, model: 0x55}
host_bridges:
  - name: pci0000:00
    devices:
      - {bdf: "0000:00:00.0", id: "8086:29c0", class: 0x060000, port: rc-endpoint}
      - bdf: "0000:00:01.0"
        id: "8086:2030"
        class: 0x060400
        port: root-port
        children:
          - bdf: "0000:01:00.0"
            id: "10b5:9797"
            class: 0x060400
            port: switch-upstream
            children:
              - bdf: "0000:02:00.0"
                id: "10b5:9797"
                class: 0x060400
                port: switch-downstream
                acs: {cap: 0x7f, ctrl: 0x1d}
                children:
                  - {bdf: "0000:03:00.0", id: "10de:1db4", class: 0x030200, port: endpoint}
              - bdf: "0000:02:01.0"
                id: "10b5:9797"
                class: 0x060400
                port: switch-downstream
                children:
                  - {bdf: "0000:04:00.0", id: "10de:1db4", class: 0x030200, port: endpoint}
"""


def test_whitelist_warning_only_from_5_14() -> None:
    """After an ACS redirect below an unlisted host bridge (8086:29c0), 5.15 (calc_map_type_and_dist(),
    5.14 on) prints "Host bridge not in P2PDMA whitelist"; 5.10's upstream_bridge_distance_warn() has
    no such line."""
    from p2pdma.sources import safeload
    from p2pdma.sources.spec import parse_spec

    topo = parse_spec(safeload.loads(_UNLISTED_ACS, "t", kind="spec"), where="t").topology(source="t")
    p, c = "0000:03:00.0", "0000:04:00.0"
    acs = [f"pci {c}: ACS redirect is set between the client and provider ({p})",
           f"pci {c}: to disable ACS redirect for this path, add the kernel parameter:"
           " pci=disable_acs_redir=0000:02:00.0"]
    hb = "pci 0000:00:00.0: Host bridge not in P2PDMA whitelist: 8086:29c0"
    no = (f"pci {c}: cannot be used for peer-to-peer DMA as the client and provider ({p})"
          " do not share an upstream bridge or whitelisted host bridge")
    for name, want in (("5.4", [*acs, no]), ("5.10", [*acs, no]), ("5.15", [*acs, hb, no]), ("7.2", [*acs, hb, no])):
        v = calc_map_type_and_dist(topo, p, c, name)
        assert (v.map_type, v.distance, list(v.kernel_log)) == (NS, 4, want), name
    # before 5.14 the list sits in a PAGE_SIZE seq_buf: 12 ports are not cut
    bdfs = [f"0000:{i:02x}:00.0" for i in range(12)]
    assert get_profile("5.10").acs_list(bdfs) == ";".join(bdfs)
    assert len(get_profile("5.15").acs_list(bdfs)) == 127
