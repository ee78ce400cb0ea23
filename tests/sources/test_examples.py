"""The bundled example machines: each loads, and the kernel's verdicts for chosen pairs are the ones
worked out by hand from drivers/pci/p2pdma.c (never pasted from the program's output).

Rules used below (calc_map_type_and_dist() / __calc_map_type_and_dist()):

* distance: walk up from the provider; for each of its ancestors (itself first) walk up from the
  client; the first bridge on both chains is the common upstream bridge and the distance is the
  number of steps taken on each side. Same function 0, two functions of one device 2 (both hang
  off the same port), two devices under one switch 4 (endpoint -> DSP -> USP on each side).
  Root ports sit on the root bus where pci_upstream_bridge() is NULL, so devices below different
  root ports meet nowhere: the distance is then the sum of both chain lengths (endpoint, DSP, USP,
  RP = 4; endpoint, RP = 2; a device on the root bus itself = 1).
* ACS: the ports checked are the provider's chain up to and including the common bridge and the
  client's chain below it. ``classic``: ctrl & (RR|CR|EC) redirects. ``latest``: RR or CR
  redirects; EC counts only at the two children of the common bridge, looking up the other
  child's Link Capabilities Port Number in the Egress Control Vector (bit set: redirect with RR,
  else blocked; bit clear: direct unless CR).
* any non-direct port, or no common upstream bridge => THRU_HOST_BRIDGE when the host bridge
  allows it (cpu_supports_p2pdma(): AuthenticAMD family >= 0x17; or host_bridge_whitelist():
  the devfn 00.0 device of each host bridge is whitelisted, REQ_SAME_HOST_BRIDGE entries only
  within one host bridge; or, latest only, an HMAT P2P path), else NOT_SUPPORTED.
"""

from __future__ import annotations

from dataclasses import replace
from importlib import resources

import pytest
import yaml

from p2pdma.examples import DEFAULT_EXAMPLE, load, load_spec, names
from p2pdma.p2p.decide import KERNEL_PROFILES as ALL_PROFILES
from p2pdma.p2p.decide import MapType, calc_map_type_and_dist
from p2pdma.p2p.matrix import compute_matrix
from p2pdma.pci.topology import Cpu, Topology

# The examples' stories hold from Linux 6.1 on; 5.4 to 5.15 lack rows these machines rely on (Ice Lake's
# 8086:09a2 came in 5.18, a Root Port as the host bridge device in 5.19, cpu_supports_p2pdma() in 5.10):
# tests/p2p/test_kernel_profiles.py checks what the older profiles decide on them.
KERNEL_PROFILES = tuple(p for p in ALL_PROFILES if p not in ("5.4", "5.10", "5.15"))

BUS, THRU, NO = MapType.BUS_ADDR, MapType.THRU_HOST_BRIDGE, MapType.NOT_SUPPORTED

EXAMPLES = [
    "acs-redirect",
    "amd-zen",
    "gpu8-switches",
    "grace-hostbridge",
    "intel-2socket",
    "spr-dsa-hostbridge",
    "sriov-nic",
    "unlisted-hostbridge",
    "zhaoxin-hostbridge",
]


@pytest.fixture(scope="module")
def topos() -> dict[str, Topology]:
    return {n: load(n) for n in EXAMPLES}


def check(
    topo: Topology,
    provider: str,
    client: str,
    map_type: MapType,
    distance: int,
    profiles: tuple[str, ...] = KERNEL_PROFILES,
) -> None:
    """The verdict in each profile, and the same for the reversed pair (both rules are symmetric
    for every pair checked with this helper)."""
    for profile in profiles:
        for p, c in ((provider, client), (client, provider)):
            v = calc_map_type_and_dist(topo, p, c, profile)
            assert (v.map_type, v.distance) == (map_type, distance), (profile, p, c, v.reason)


# --------------------------------------------------------------------------------------------
# The list itself


def test_names_are_exactly_the_bundled_nine() -> None:
    assert names() == EXAMPLES
    assert DEFAULT_EXAMPLE in names()


@pytest.mark.parametrize("name", EXAMPLES)
def test_each_example_loads_cleanly(name: str) -> None:
    raw = yaml.safe_load(resources.files("p2pdma.examples").joinpath(f"{name}.yaml").read_text())
    assert raw["name"] == name
    desc = raw["description"]
    assert isinstance(desc, str) and desc.strip() and "\n" not in desc
    spec = load_spec(name)
    assert spec.name == name and spec.description == desc
    topo = load(name)
    assert topo.warnings == ()
    # every host bridge has a devfn 00.0 device for the whitelist to read
    for hbr in topo.host_bridges:
        assert hbr.host_dev is not None and topo[hbr.host_dev].devfn == 0
    # config space is complete, so every ACS answer is certain
    assert all(d.acs_known for d in topo.devices)
    # every bridge's children sit on its secondary bus, below it
    for d in topo.devices:
        if d.parent is not None and d.physfn is None:
            assert d.bus > topo[d.parent].bus


# --------------------------------------------------------------------------------------------
# gpu8-switches

S0_GPU_A, S0_GPU_B, S0_NIC = "0000:03:00.0", "0000:04:00.0", "0000:05:00.0"  # switch 01:00.0
S0_GPU_C, S0_GPU_D, S0_NIC2 = "0000:08:00.0", "0000:09:00.0", "0000:0a:00.0"  # switch 06:00.0
NVME = "0000:0b:00.0"
S1_GPU_A, S1_GPU_B, S1_NIC = "0000:83:00.0", "0000:84:00.0", "0000:85:00.0"  # switch 81:00.0
S1_GPU_C = "0000:88:00.0"  # switch 86:00.0


def test_gpu8_shape(topos: dict[str, Topology]) -> None:
    t = topos["gpu8-switches"]
    gpus = [d for d in t.devices if (d.vendor, d.device) == (0x10DE, 0x2330)]
    nics = [d for d in t.devices if (d.vendor, d.device) == (0x15B3, 0x1021)]
    usps = [d for d in t.devices if d.port_type_name == "switch-upstream"]
    dsps = [d for d in t.devices if d.port_type_name == "switch-downstream"]
    assert (len(gpus), len(nics), len(usps), len(dsps)) == (8, 4, 4, 12)
    assert [h.name for h in t.host_bridges] == ["pci0000:00", "pci0000:80"]
    assert {t[h.host_dev].device for h in t.host_bridges if h.host_dev} == {0x09A2}
    for d in dsps:
        assert d.acs is not None and d.acs.ctrl == 0
    # port numbers distinct per switch
    for u in usps:
        assert sorted(d.port_number for d in dsps if d.parent == u.bdf) == [1, 2, 3]
    assert t[S0_GPU_A].numa_node == 0 and t[S1_GPU_A].numa_node == 1
    assert t.cpu is not None and (t.cpu.vendor, t.cpu.family, t.cpu.model) == ("GenuineIntel", 6, 143)


def test_gpu8_verdicts(topos: dict[str, Topology]) -> None:
    t = topos["gpu8-switches"]
    # Same function: the provider is on the client's chain at step 0.
    check(t, S0_GPU_A, S0_GPU_A, BUS, 0)
    # Two GPUs under one switch: they meet at the USP 01:00.0 after GPU -> DSP -> USP on both
    # sides (2 + 2); DSPs have ACS ctrl 0, the USP and GPUs no ACS: nothing redirects.
    check(t, S0_GPU_A, S0_GPU_B, BUS, 4)
    # GPU and NIC under the same switch: same reasoning.
    check(t, S0_GPU_A, S0_NIC, BUS, 4)
    check(t, S1_GPU_B, S1_NIC, BUS, 4)
    # Switches on different root ports of one socket: the root ports are on the root bus, so the
    # chains meet nowhere; the host bridge device 8086:09a2 is whitelisted (flags 0), same host
    # bridge => THRU_HOST_BRIDGE; distance 4 (GPU, DSP, USP, RP) + 4.
    check(t, S0_GPU_A, S0_GPU_C, THRU, 8)
    check(t, S0_NIC, S0_NIC2, THRU, 8)
    # Across sockets: both host bridge devices are 8086:09a2 without REQ_SAME_HOST_BRIDGE.
    check(t, S0_GPU_A, S1_GPU_A, THRU, 8)
    check(t, S0_NIC, S1_GPU_C, THRU, 8)
    # The NVMe drive sits directly on root port 00:03.0: chain NVMe, RP = 2; 4 + 2.
    check(t, S0_GPU_D, NVME, THRU, 6)
    check(t, NVME, S1_NIC, THRU, 6)
    # The host bridge device itself is on the root bus: chain length 1; 1 + 4.
    check(t, "0000:00:00.0", S0_GPU_A, THRU, 5)
    check(t, "0000:00:00.0", "0000:80:00.0", THRU, 2)


def test_gpu8_no_acs_ports_reported(topos: dict[str, Topology]) -> None:
    t = topos["gpu8-switches"]
    v = calc_map_type_and_dist(t, S0_GPU_A, S0_GPU_B)
    # The paths meet at the switch upstream port; nothing to disable.
    assert v.common == "0000:01:00.0" and v.acs_ports == () and v.fix is None
    v = calc_map_type_and_dist(t, S0_GPU_A, S1_GPU_A)
    assert v.common is None and v.via == "whitelist"


def test_gpu8_counts(topos: dict[str, Topology]) -> None:
    t = topos["gpu8-switches"]
    # 15 non-bridge functions (8 GPUs, 4 NICs, NVMe, 2 host bridge devices): 225 ordered pairs.
    # BUS_ADDR: 15 same-function pairs + 4 switches x 3 x 2 ordered pairs under one switch = 39;
    # everything else crosses root ports and both host bridges are whitelisted.
    for profile in KERNEL_PROFILES:
        m = compute_matrix(t, profile)
        assert len(m.bdfs) == 15
        assert m.counts() == {"BUS_ADDR": 39, "THRU_HOST_BRIDGE": 186, "NOT_SUPPORTED": 0}


# --------------------------------------------------------------------------------------------
# acs-redirect

A_GPU1, A_GPU2, A_NIC = "0000:03:00.0", "0000:04:00.0", "0000:05:00.0"
A_DSP1, A_DSP2, A_DSP3 = "0000:02:00.0", "0000:02:01.0", "0000:02:02.0"
B_EP1, B_EP2, B_EP3 = "0000:08:00.0", "0000:09:00.0", "0000:0a:00.0"
B_DSP1, B_DSP2, B_DSP3 = "0000:07:00.0", "0000:07:01.0", "0000:07:02.0"


def test_acs_redirect_rr_cr(topos: dict[str, Topology]) -> None:
    t = topos["acs-redirect"]
    # Switch A: both DSPs on the path have RR|CR (0x1d): redirected in both profiles; the host
    # bridge device 8086:2020 is whitelisted => THRU_HOST_BRIDGE; the chains still meet at the
    # USP, so the distance is 2 + 2.
    check(t, A_GPU1, A_GPU2, THRU, 4)
    check(t, A_GPU2, A_NIC, THRU, 4)
    for profile in KERNEL_PROFILES:
        v = calc_map_type_and_dist(t, A_GPU1, A_NIC, profile)
        # provider side first (its DSP), then the client's DSP
        assert v.acs_ports == (A_DSP1, A_DSP3)
        assert v.fix == f"pci=disable_acs_redir={A_DSP1};{A_DSP3}"
        assert v.via == "whitelist"


def test_acs_redirect_egress_classic(topos: dict[str, Topology]) -> None:
    t = topos["acs-redirect"]
    # Classic kernels redirect at any port with RR|CR|EC in ctrl: 07:00.0 and 07:01.0 both have EC.
    check(t, B_EP1, B_EP2, THRU, 4, ("classic",))
    v = calc_map_type_and_dist(t, B_EP1, B_EP2, "classic")
    assert v.acs_ports == (B_DSP1, B_DSP2)
    # The profiles disagree: 07:00.0 (EC) is on the path to 0a:00.0.
    check(t, B_EP1, B_EP3, THRU, 4, ("classic",))
    check(t, B_EP2, B_EP3, THRU, 4, ("classic",))
    assert calc_map_type_and_dist(t, B_EP1, B_EP3, "classic").acs_ports == (B_DSP1,)


def test_acs_redirect_cross_switch(topos: dict[str, Topology]) -> None:
    t = topos["acs-redirect"]
    # Different root ports: no common upstream bridge, ACS is not what decides; the one host bridge
    # is whitelisted => THRU_HOST_BRIDGE, distance 4 + 4.
    check(t, A_GPU1, B_EP3, THRU, 8)
    check(t, A_NIC, B_EP1, THRU, 8)
    v = calc_map_type_and_dist(t, A_GPU1, B_EP3)
    assert v.common is None and v.acs_ports == () and v.fix is None


def test_acs_redirect_counts(topos: dict[str, Topology]) -> None:
    t = topos["acs-redirect"]
    # 7 non-bridge functions (host bridge device, 3 under switch A, 3 under switch B): 49 pairs.
    # pci_bridge_has_acs_redir() (every profile): every pair under switch B is redirected too (EC):
    # only the 7 same-function pairs are direct; 8086:2020 is whitelisted in 6.1, 7.2 and pci-next.
    for profile in ("6.1", "7.2", "pci-next", "latest", "classic"):
        assert compute_matrix(t, profile).counts() == {"BUS_ADDR": 7, "THRU_HOST_BRIDGE": 42, "NOT_SUPPORTED": 0}


# --------------------------------------------------------------------------------------------
# intel-2socket


def test_intel_2socket(topos: dict[str, Topology]) -> None:
    t = topos["intel-2socket"]
    assert {t[h.host_dev].device for h in t.host_bridges if h.host_dev} == {0x2020}
    assert not any(d.port_type_name in ("switch-upstream", "switch-downstream") for d in t.devices)
    # Two endpoints on different root ports of socket 0: no common bridge, 8086:2020 whitelisted
    # (flags 0) => THRU_HOST_BRIDGE; distance 2 (EP, RP) + 2.
    check(t, "0000:01:00.0", "0000:02:00.0", THRU, 4)
    check(t, "0000:02:00.0", "0000:03:00.0", THRU, 4)
    # Across sockets: both host bridge devices whitelisted without REQ_SAME_HOST_BRIDGE.
    check(t, "0000:01:00.0", "0000:81:00.0", THRU, 4)
    check(t, "0000:03:00.0", "0000:82:00.0", THRU, 4)
    # Host bridge device (chain 1) with an endpoint (chain 2).
    check(t, "0000:80:00.0", "0000:81:00.0", THRU, 3)
    v = calc_map_type_and_dist(t, "0000:01:00.0", "0000:81:00.0")
    assert v.via == "whitelist" and v.common is None
    # 7 non-bridge functions: only the 7 same-function pairs are BUS_ADDR.
    for profile in KERNEL_PROFILES:
        assert compute_matrix(t, profile).counts() == {"BUS_ADDR": 7, "THRU_HOST_BRIDGE": 42, "NOT_SUPPORTED": 0}


# --------------------------------------------------------------------------------------------
# amd-zen


def test_amd_zen(topos: dict[str, Topology]) -> None:
    t = topos["amd-zen"]
    assert t.cpu is not None and t.cpu.vendor == "AuthenticAMD" and t.cpu.family == 0x19
    assert {t[h.host_dev].device for h in t.host_bridges if h.host_dev} == {0x14A4}
    # GPUs on different root ports of one host bridge: no common bridge; 1022:14a4 is not
    # whitelisted but cpu_supports_p2pdma() (AMD family 0x19 >= 0x17) => THRU_HOST_BRIDGE; 2 + 2.
    check(t, "0000:01:00.0", "0000:02:00.0", THRU, 4)
    # Different host bridges: the CPU check comes first, the whitelist is not consulted.
    check(t, "0000:01:00.0", "0000:41:00.0", THRU, 4)
    check(t, "0000:02:00.0", "0000:42:00.0", THRU, 4)
    v = calc_map_type_and_dist(t, "0000:01:00.0", "0000:41:00.0")
    assert v.via == "cpu"
    # 6 non-bridge functions: 6 same-function pairs BUS_ADDR, all 30 others THRU_HOST_BRIDGE.
    for profile in KERNEL_PROFILES:
        assert compute_matrix(t, profile).counts() == {"BUS_ADDR": 6, "THRU_HOST_BRIDGE": 30, "NOT_SUPPORTED": 0}


@pytest.mark.parametrize(
    "cpu",
    [Cpu("GenuineIntel", 6, 143), Cpu("AuthenticAMD", 0x16, 0x30), Cpu("HygonGenuine", 0x18, 0)],
)
def test_amd_zen_needs_the_cpu(topos: dict[str, Topology], cpu: Cpu) -> None:
    # The same machine without a Zen CPU: 1022:14a4 is not on the whitelist, no HMAT => NOT_SUPPORTED.
    # (cpu_supports_p2pdma() checks X86_VENDOR_AMD only; pre-Zen family 0x16 is too old.)
    t = replace(topos["amd-zen"], cpu=cpu)
    check(t, "0000:01:00.0", "0000:02:00.0", NO, 4)
    check(t, "0000:01:00.0", "0000:41:00.0", NO, 4)


# --------------------------------------------------------------------------------------------
# sriov-nic

PF0, PF1, SR_GPU = "0000:03:00.0", "0000:03:00.1", "0000:04:00.0"
VFS = ("0000:03:00.2", "0000:03:00.3", "0000:03:00.4", "0000:03:00.5")


def test_sriov_shape(topos: dict[str, Topology]) -> None:
    t = topos["sriov-nic"]
    assert t[PF0].multifunction and t[PF1].multifunction
    for vf in VFS:
        d = t[vf]
        assert d.physfn == PF0 and (d.vendor, d.device) == (0x15B3, 0x101E)
        # pci_upstream_bridge() of a VF is that of its PF (pci_physfn()).
        assert d.parent == t[PF0].parent == "0000:02:00.0"
    assert t[PF1].parent == "0000:02:00.0" and t[PF1].physfn is None


def test_sriov_verdicts(topos: dict[str, Topology]) -> None:
    t = topos["sriov-nic"]
    # Two functions of one device: both hang off DSP 02:00.0, 1 step each; its ctrl is 0.
    check(t, PF0, PF1, BUS, 2)
    # A VF and its own PF: the VF's upstream bridge is the PF's, so again 1 + 1.
    check(t, PF0, VFS[0], BUS, 2)
    # A VF and the other PF, and two VFs.
    check(t, PF1, VFS[3], BUS, 2)
    check(t, VFS[1], VFS[2], BUS, 2)
    # NIC functions and the GPU behind the other DSP: meet at the USP, 2 + 2; ACS ctrl 0.
    check(t, PF0, SR_GPU, BUS, 4)
    check(t, PF1, SR_GPU, BUS, 4)
    check(t, VFS[0], SR_GPU, BUS, 4)
    # The host bridge device (chain 1) and a VF (chain VF, DSP, USP, RP = 4): no common bridge,
    # 8086:09a2 whitelisted => THRU_HOST_BRIDGE, 1 + 4.
    check(t, "0000:00:00.0", VFS[0], THRU, 5)
    # 8 non-bridge functions: the 7 under the switch are all BUS_ADDR to each other (49 ordered
    # pairs) plus the host bridge device to itself; its 14 pairs with the others THRU.
    for profile in KERNEL_PROFILES:
        assert compute_matrix(t, profile).counts() == {"BUS_ADDR": 50, "THRU_HOST_BRIDGE": 14, "NOT_SUPPORTED": 0}


# --------------------------------------------------------------------------------------------
# unlisted-hostbridge

U_GPU_RP, U_GPU_SW, U_NIC_SW, U_NVME = "0000:01:00.0", "0000:04:00.0", "0000:05:00.0", "0000:06:00.0"


def test_unlisted_hostbridge(topos: dict[str, Topology]) -> None:
    t = topos["unlisted-hostbridge"]
    hbdev = t[t.host_bridges[0].host_dev or ""]
    assert (hbdev.vendor, hbdev.device) == (0x1D0F, 0x0200)
    assert t.cpu is not None and t.cpu.vendor == "GenuineIntel" and t.hmat == ()
    # Different root ports: no common bridge; Intel CPU (cpu_supports_p2pdma() false), host bridge
    # device not whitelisted, no HMAT => NOT_SUPPORTED; distance 2 (GPU, RP) + 4 (GPU, DSP, USP, RP).
    check(t, U_GPU_RP, U_GPU_SW, NO, 6)
    check(t, U_GPU_RP, U_NVME, NO, 4)
    check(t, U_NIC_SW, U_NVME, NO, 6)
    v = calc_map_type_and_dist(t, U_GPU_RP, U_NVME)
    assert v.via is None and v.common is None
    # Under one switch with ACS ctrl 0: the host bridge is never consulted => BUS_ADDR, 2 + 2.
    check(t, U_GPU_SW, U_NIC_SW, BUS, 4)
    # 5 non-bridge functions: 5 same-function pairs + GPU<->NIC both ways BUS_ADDR; 18 others refused.
    for profile in KERNEL_PROFILES:
        assert compute_matrix(t, profile).counts() == {"BUS_ADDR": 7, "THRU_HOST_BRIDGE": 0, "NOT_SUPPORTED": 18}


# --------------------------------------------------------------------------------------------
# The vectorised matrix agrees with the per-pair walk on every example


@pytest.mark.parametrize("profile", KERNEL_PROFILES)
@pytest.mark.parametrize("name", EXAMPLES)
@pytest.mark.parametrize("include_bridges", [False, True])
def test_matrix_matches_per_pair(topos: dict[str, Topology], name: str, profile: str, include_bridges: bool) -> None:
    t = topos[name]
    m = compute_matrix(t, profile, include_bridges=include_bridges, block=5)
    expected_n = len(t.devices) if include_bridges else len(t.endpoints)
    assert len(m.bdfs) == expected_n
    bad = []
    for i, p in enumerate(m.bdfs):
        for j, c in enumerate(m.bdfs):
            v = calc_map_type_and_dist(t, p, c, profile)
            got = (MapType(int(m.map_type[i, j])), int(m.distance[i, j]), bool(m.certain[i, j]))
            if got != (v.map_type, v.distance, v.certain):
                bad.append((p, c, got, (v.map_type, v.distance, v.certain)))
    assert not bad, bad[:5]
