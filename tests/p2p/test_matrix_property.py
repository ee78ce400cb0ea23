"""The vectorised matrix against the per-pair decision on random synthetic machines, and the
synthetic generator's own guarantees (reproducibility, exact endpoint count, PCI addressing)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pdma.p2p import platform
from p2pdma.p2p.decide import KERNEL_PROFILES, calc_map_type_and_dist
from p2pdma.p2p.matrix import compute_matrix
from p2pdma.pci import config as cfg
from p2pdma.pci.topology import HOST_BRIDGE_RE, parse_bdf
from p2pdma.sources.spec import parse_spec
from p2pdma.sources.synth import generate, generate_machine

PROBABILITY = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0))

MACHINE_ARGS = st.fixed_dictionaries(
    {
        "n_endpoints": st.integers(1, 40),
        "seed": st.integers(0, 2**32 - 1),
        "host_bridges": st.integers(1, 3),
        "max_switch_depth": st.integers(0, 3),
        "acs_probability": PROBABILITY,
        "ec_probability": PROBABILITY,
        "config_size_64_probability": st.sampled_from([0.0, 0.05, 0.2, 0.5]),
        "multifunction_probability": st.sampled_from([0.0, 0.1, 0.3, 0.7]),
        "vf_probability": st.sampled_from([0.0, 0.1, 0.3, 0.7]),
        "cpu": st.sampled_from(["intel", "amd"]),
        "whitelisted": st.booleans(),
        "hmat": st.booleans(),
    }
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    args=MACHINE_ARGS,
    profile=st.sampled_from(KERNEL_PROFILES),
    include_bridges=st.booleans(),
)
def test_matrix_equals_per_pair_decision(
    args: dict[str, Any], profile: str, include_bridges: bool
) -> None:
    topo = generate_machine(**args).topology()
    m = compute_matrix(topo, profile, include_bridges=include_bridges)
    n = len(m.bdfs)
    want_mt = np.zeros((n, n), dtype=np.int8)
    want_dist = np.zeros((n, n), dtype=np.int32)
    want_certain = np.zeros((n, n), dtype=bool)
    for i, provider in enumerate(m.bdfs):
        for j, client in enumerate(m.bdfs):
            v = calc_map_type_and_dist(topo, provider, client, profile)
            want_mt[i, j] = v.map_type.value
            want_dist[i, j] = v.distance
            want_certain[i, j] = v.certain
    bad = np.argwhere(
        (want_mt != m.map_type) | (want_dist != m.distance) | (want_certain != m.certain)
    )
    assert not len(bad), [
        (
            m.bdfs[i],
            m.bdfs[j],
            "per-pair",
            int(want_mt[i, j]),
            int(want_dist[i, j]),
            bool(want_certain[i, j]),
            "matrix",
            int(m.map_type[i, j]),
            int(m.distance[i, j]),
            bool(m.certain[i, j]),
        )
        for i, j in bad[:5]
    ]


def _walk(devices: list[dict[str, Any]]) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """(device, its children) for every device of a spec tree, depth first."""
    out: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    for d in devices:
        kids = d.get("children") or []
        out.append((d, kids))
        out.extend(_walk(kids))
    return out


def _check_addressing(spec: dict[str, Any]) -> None:
    """Distinct domains, buses 0..255, children on one higher bus, <=32 slots, distinct
    port numbers among sibling ports, egress vectors sized to the vector."""
    domains = set()
    for hb in spec["host_bridges"]:
        m = HOST_BRIDGE_RE.match(hb["name"])
        assert m, hb["name"]
        domain = int(m["dom"], 16)
        assert domain not in domains
        domains.add(domain)
        slots: dict[int, set[int]] = {}
        devfns: set[tuple[int, int]] = set()
        root_numbers = [d["port_number"] for d in hb["devices"] if d.get("port") == "root-port"]
        assert len(root_numbers) == len(set(root_numbers))
        assert {parse_bdf(d["bdf"])[1] for d in hb["devices"]} == {0}
        for d, kids in _walk(hb["devices"]):
            dom, bus, slot, fn = parse_bdf(d["bdf"])
            assert dom == domain and 0 <= bus <= 255
            slots.setdefault(bus, set()).add(slot)
            assert (bus, slot * 8 + fn) not in devfns
            devfns.add((bus, slot * 8 + fn))
            if kids:
                kid_buses = {parse_bdf(k["bdf"])[1] for k in kids}
                assert len(kid_buses) == 1 and kid_buses.pop() > bus
                numbers = [k["port_number"] for k in kids if k.get("port") == "switch-downstream"]
                assert len(numbers) == len(set(numbers))
            acs = d.get("acs")
            if acs and acs["ctrl"] & cfg.PCI_ACS_EC:
                assert acs["cap"] & 0xFF == 0x7F
                assert len(acs["egress"]) == (cfg.egress_vector_bits(acs["cap"]) + 31) // 32
        assert all(len(s) <= 32 for s in slots.values())


def test_same_seed_same_spec() -> None:
    kw: dict[str, Any] = dict(
        seed=1234, acs_probability=0.6, ec_probability=0.5, config_size_64_probability=0.1,
        multifunction_probability=0.3, vf_probability=0.3, hmat=True, host_bridges=3,
    )
    a = generate(300, **kw)
    assert a == generate(300, **kw)
    assert a != generate(300, **{**kw, "seed": 1235})
    ta = generate_machine(300, **kw).topology()
    tb = generate_machine(300, **kw).topology()
    assert ta.devices == tb.devices and ta.host_bridges == tb.host_bridges and ta.hmat == tb.hmat


@pytest.mark.parametrize("n", [1, 2, 3, 7, 40, 161, 500])
@pytest.mark.parametrize("mf_vf", [0.0, 0.4, 1.0])
def test_endpoint_count_is_exact(n: int, mf_vf: float) -> None:
    """n_endpoints counts every non-bridge function: the 00.0 host bridge devices, RCiEPs, every
    function of a multifunction device and every VF (so the matrix is n x n)."""
    spec = generate(
        n, seed=n, host_bridges=3, multifunction_probability=mf_vf, vf_probability=mf_vf,
        config_size_64_probability=0.2,
    )
    _check_addressing(spec)
    topo = parse_spec(spec).topology()
    assert topo.warnings == ()
    assert len(topo.endpoints) == n
    # host_bridges is honoured, but a host bridge needs an endpoint (its 00.0 device)
    assert len(spec["host_bridges"]) >= min(n, 3)
    assert len(spec["host_bridges"]) <= n
    assert len(compute_matrix(topo).bdfs) == n
    if mf_vf == 1.0 and n >= 40:
        kinds = Counter("vf" if d.is_vf else "mf" if d.multifunction else "other"
                        for d in topo.endpoints)
        assert kinds["vf"] and kinds["mf"]


def test_ten_thousand_endpoints() -> None:
    spec = generate(10_000, seed=3, vf_probability=0.1, multifunction_probability=0.2,
                    config_size_64_probability=0.02)
    _check_addressing(spec)
    assert len(spec["host_bridges"]) > 2  # more PCI domains than asked for: 256 buses each
    machine = parse_spec(spec)
    non_bridge = 0
    for raw in machine.raws:
        assert raw.config is not None
        if cfg.decode(raw.config).header_type == cfg.HEADER_NORMAL:
            non_bridge += 1
    assert non_bridge == 10_000
    assert any(r.physfn for r in machine.raws)


def test_platform_options() -> None:
    amd = generate_machine(60, seed=5, cpu="amd", whitelisted=False, hmat=True).topology()
    assert amd.cpu is not None and amd.cpu.vendor == "AuthenticAMD" and amd.cpu.family == 0x19
    assert platform.cpu_supports_p2pdma(amd)
    names = {hb.name for hb in amd.host_bridges}
    assert amd.hmat and all(p.initiator in names and p.target in names for p in amd.hmat)
    for whitelisted in (True, False):
        topo = generate_machine(60, seed=5, whitelisted=whitelisted, host_bridges=4).topology()
        assert not platform.cpu_supports_p2pdma(topo) and not topo.hmat
        for hb in topo.host_bridges:
            assert hb.host_dev is not None and hb.host_dev.endswith(":00.0")
            assert (platform.whitelist_entry(topo[hb.host_dev]) is not None) == whitelisted


def test_unreadable_config_and_no_acs() -> None:
    topo = generate_machine(50, seed=9, config_size_64_probability=1.0).topology()
    assert all(not d.acs_known and d.acs is None for d in topo.devices)
    topo = generate_machine(50, seed=9, acs_probability=0.0).topology()
    assert all(d.acs is None and d.acs_known for d in topo.devices)
    flat = generate(50, seed=9, max_switch_depth=0)
    assert all(d.get("port") != "switch-upstream" for hb in flat["host_bridges"]
               for d, _ in _walk(hb["devices"]))


@pytest.mark.parametrize(
    "kw",
    [
        {"n_endpoints": 0},
        {"n_endpoints": 5, "host_bridges": 0},
        {"n_endpoints": 5, "max_switch_depth": -1},
        {"n_endpoints": 5, "acs_probability": 1.5},
        {"n_endpoints": 5, "vf_probability": -0.1},
        {"n_endpoints": 5, "cpu": "arm"},
    ],
)
def test_bad_arguments(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        generate(**kw)
