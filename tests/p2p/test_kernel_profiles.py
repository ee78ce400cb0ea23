"""Kernel profiles (p2p/kernels.py): hand-derived verdicts on the bundled examples where 6.1, 7.2 and
pci-next differ (whitelist rows), their exact log strings, the release resolver, and the matrix equal
to the per-pair function under every profile."""

from __future__ import annotations

import pytest

from p2pdma import examples
from p2pdma.p2p.decide import KERNEL_PROFILES, MapType, calc_map_type_and_dist
from p2pdma.p2p.kernels import PROFILES, get_profile, resolve_kernel
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
    assert rows["6.1"] < rows["7.2"] < rows["pci-next"]
    assert len(PROFILES["7.2"].whitelist) == 21 and len(PROFILES["pci-next"].whitelist) == 30


@pytest.mark.parametrize(
    ("name", "release", "profile", "note"),
    [
        ("auto", "7.2.13+deb14-amd64", "7.2", "backports are not modelled"),
        ("auto", "6.1.0-28-amd64", "6.1", "backports"),
        ("auto", "5.14.0-427.el9.x86_64", "6.1", "not read"),
        ("auto", "6.8.0-45-generic", "7.2", "not read"),
        ("auto", None, "7.2", "no kernel release"),
        ("auto", "weird", "7.2", "not understood"),
        ("latest", None, "7.2", "alias"),
        ("classic", "6.1.0", "7.2", "alias"),
        ("6.1", "7.2.13", "6.1", None),
        ("pci-next", None, "pci-next", None),
        ("5.15", None, "6.1", "not read"),
        ("6.12.3", None, "7.2", "not read"),
        ("7.2", None, "7.2", None),
    ],
)
def test_resolve_kernel(name: str, release: str | None, profile: str, note: str | None) -> None:
    got, source, notes = resolve_kernel(name, release)
    assert got == profile and source
    if note is None:
        assert notes == []
    else:
        assert any(note in n for n in notes), notes


@pytest.mark.parametrize("bad", ["x", "7", "7.2-rc1", ""])
def test_resolve_kernel_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        resolve_kernel(bad, None)


@pytest.mark.parametrize("example", ["grace-hostbridge", "spr-dsa-hostbridge", "zhaoxin-hostbridge", "acs-redirect"])
@pytest.mark.parametrize("profile", KERNEL_PROFILES)
def test_matrix_equals_per_pair(example: str, profile: str) -> None:
    topo = examples.load(example)
    m = compute_matrix(topo, profile)
    for i, p in enumerate(m.bdfs):
        for j, c in enumerate(m.bdfs):
            v = calc_map_type_and_dist(topo, p, c, profile)
            assert (MapType(int(m.map_type[i, j])), int(m.distance[i, j]), bool(m.certain[i, j])) == (
                v.map_type, v.distance, v.certain)
