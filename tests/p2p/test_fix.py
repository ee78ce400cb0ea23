"""`p2pdma fix`: the smallest ACS change, applied and re-verified on every bundled example and on
random synthetic machines; the kernel-parameter syntax of __pci_config_acs(); setpci; the CLI."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pdma import examples
from p2pdma.cli import main
from p2pdma.p2p.decide import KERNEL_PROFILES, MapType, calc_map_type_and_dist
from p2pdma.p2p.fix import (
    REDIRECT_BITS,
    apply_acs_ctrl,
    apply_config_acs,
    config_acs_mask,
    parse_config_acs,
    path_uses,
    plan_fix,
)
from p2pdma.p2p.matrix import compute_matrix
from p2pdma.pci import config as cfg
from p2pdma.pci.topology import Topology
from p2pdma.sources.synth import generate_machine
from tests.helpers import as_topology, dev, hb, machine

SETPCI_RE = re.compile(r"^setpci -s [0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7] ECAP_ACS\+0x6\.w=0000:[0-9a-f]{4}\b")


def _has_common(topo: Topology, a: str, b: str) -> bool:
    return topo.chain(a)[-1].bdf == topo.chain(b)[-1].bdf


def _check_plan(topo: Topology, devices: list[str], profile: str) -> None:
    """The properties every plan must have: requested pairs BUS_ADDR after, nothing made worse,
    each cleared bit needed, and the kernel parameter reproducing the new ACS Control values."""
    plan = plan_fix(topo, devices, profile)
    fixed = plan.fixed
    assert plan.verified
    for p in devices:
        for c in devices:
            if p == c:
                continue
            after = calc_map_type_and_dist(fixed, p, c, profile)
            before = calc_map_type_and_dist(topo, p, c, profile)
            if _has_common(topo, p, c):
                assert after.map_type == MapType.BUS_ADDR, (p, c, after.reason)
            else:
                assert after.map_type == before.map_type
    # only bits are cleared, so no pair of the whole machine gets worse
    whole_before = compute_matrix(topo, profile, include_bridges=True)
    whole_after = compute_matrix(fixed, profile, include_bridges=True)
    was_direct = whole_before.map_type == MapType.BUS_ADDR.value
    assert (whole_after.map_type[was_direct] == MapType.BUS_ADDR.value).all()
    for ch in plan.changes:
        assert ch.cleared and not ch.cleared & ~REDIRECT_BITS and ch.after == ch.before & ~ch.cleared
        if profile == "classic":
            assert ch.after & REDIRECT_BITS == 0
        # minimal: putting back any single cleared bit breaks some requested pair
        for bit in (cfg.PCI_ACS_RR, cfg.PCI_ACS_CR, cfg.PCI_ACS_EC):
            if not ch.cleared & bit:
                continue
            worse = apply_acs_ctrl(fixed, {ch.bdf: ch.after | bit})
            m = compute_matrix(worse, profile, select=devices)
            assert (m.map_type != MapType.BUS_ADDR.value).any(), (ch.bdf, bit)
        # the config_acs entry reproduces the value when the firmware value equals today's
        mask_text = config_acs_mask(ch)
        assert len(mask_text) == 7 and set(mask_text) <= set("01x")
    if plan.config_acs:
        entries = parse_config_acs(plan.config_acs.removeprefix("pci=config_acs="))
        assert [e[2] for e in entries] == [c.bdf for c in plan.changes]
        for (mask, flags, _), ch in zip(entries, plan.changes, strict=True):
            assert apply_config_acs(ch.before, mask, flags) == ch.after
        assert plan.disable_acs_redir == "pci=disable_acs_redir=" + ";".join(c.bdf for c in plan.changes)
        assert all(SETPCI_RE.match(x) for x in plan.setpci)


@pytest.mark.parametrize("profile", KERNEL_PROFILES)
@pytest.mark.parametrize("name", examples.names())
def test_every_example_all_endpoints(name: str, profile: str) -> None:
    topo = examples.load(name)
    _check_plan(topo, [d.bdf for d in topo.endpoints], profile)


MACHINES = st.fixed_dictionaries(
    {
        "n_endpoints": st.integers(2, 24),
        "seed": st.integers(0, 2**32 - 1),
        "host_bridges": st.integers(1, 2),
        "max_switch_depth": st.integers(0, 3),
        "acs_probability": st.sampled_from([0.0, 0.3, 0.7, 1.0]),
        "ec_probability": st.sampled_from([0.0, 0.3, 1.0]),
        "multifunction_probability": st.sampled_from([0.0, 0.3]),
        "vf_probability": st.sampled_from([0.0, 0.3]),
    }
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(args=MACHINES, profile=st.sampled_from(KERNEL_PROFILES), data=st.data())
def test_synthetic_machines_property(args: dict[str, Any], profile: str, data: st.DataObject) -> None:
    topo = generate_machine(**args).topology()
    pool = [d.bdf for d in topo.devices]
    chosen = data.draw(st.lists(st.sampled_from(pool), min_size=2, max_size=8, unique=True))
    _check_plan(topo, chosen, profile)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(args=MACHINES, data=st.data())
def test_path_uses_match_the_per_pair_walk(args: dict[str, Any], data: st.DataObject) -> None:
    """The structural enumeration of (port, egress target) equals what each pair's walk visits."""
    topo = generate_machine(**args).topology()
    pool = [d.bdf for d in topo.devices]
    chosen = data.draw(st.lists(st.sampled_from(pool), min_size=2, max_size=10, unique=True))
    want: dict[str, set[str | None]] = {}
    for p in chosen:
        for c in chosen:
            if p == c or not _has_common(topo, p, c):
                continue
            for port in calc_map_type_and_dist(topo, p, c, "7.2").ports:
                want.setdefault(port.bdf, set()).add(port.target)
    assert path_uses(topo, chosen) == want


@pytest.mark.parametrize("profile", ["6.1", "7.2", "pci-next", "latest", "classic"])
def test_acs_redirect_example_every_profile(profile: str) -> None:
    topo = examples.load("acs-redirect")
    gpus = ["0000:08:00.0", "0000:09:00.0", "0000:0a:00.0"]
    # pci_bridge_has_acs_redir() redirects at any EC port: both EC ports of switch B change
    plan = plan_fix(topo, gpus, profile)
    assert [c.bdf for c in plan.changes] == ["0000:07:00.0", "0000:07:01.0"]
    sw_a = plan_fix(topo, ["0000:03:00.0", "0000:04:00.0"], profile)
    assert [(c.bdf, cfg.acs_bits_text(c.cleared)) for c in sw_a.changes] == [
        ("0000:02:00.0", "RR,CR"), ("0000:02:01.0", "RR,CR")]
    assert sw_a.config_acs == "pci=config_acs=xx100x1@0000:02:00.0;xx100x1@0000:02:01.0"
    assert sw_a.setpci[0].startswith("setpci -s 0000:02:00.0 ECAP_ACS+0x6.w=0000:000c")


def _switch(dsp_acs: dict[str, Any]) -> Topology:
    """A root port (SV|RR|CR|UF) and a switch with two downstream ports set to ``dsp_acs``."""
    dsps = [
        dev(f"0000:02:0{i}.0", "10b5:9797", port="switch-downstream", port_number=i + 1, acs=dict(dsp_acs),
            children=[dev(f"0000:0{3 + i}:00.0", "10de:2330")])
        for i in range(2)
    ]
    usp = dev("0000:01:00.0", "10b5:9797", port="switch-upstream", children=dsps)
    rp = dev("0000:00:01.0", "8086:2030", port="root-port", port_number=1,
             acs={"cap": 0x5F, "ctrl": 0x1D}, children=[usp])
    return as_topology(machine([hb("pci0000:00", [dev("0000:00:00.0", "8086:2020", **{"class": 0x060000}), rp])]))


@pytest.mark.parametrize(
    ("acs", "cleared"),
    [
        ({"cap": 0x7F, "ctrl": 0x1D}, "RR,CR"),  # redirect: both bits, wherever
        ({"cap": 0x7F, "ctrl": 0x04}, "RR"),  # RR only
        ({"cap": 0x7F, "ctrl": 0x31, "egress": [0x6]}, "EC"),  # EC blocks, no RR: clearing EC is enough
        ({"cap": 0x7F, "ctrl": 0x35, "egress": [0x6]}, "RR,EC"),  # EC blocks with RR: both
        # pci_bridge_has_acs_redir() does not read the egress vector: every set RR/CR/EC goes
        ({"cap": 0x7F, "ctrl": 0x25, "egress": [0x0]}, "RR,EC"),
        ({"cap": 0x7F, "ctrl": 0x2D, "egress": [0x0]}, "RR,CR,EC"),
    ],
)
def test_minimal_bits_at_the_divergence(acs: dict[str, Any], cleared: str | None) -> None:
    topo = _switch(acs)
    plan = plan_fix(topo, ["0000:03:00.0", "0000:04:00.0"], "7.2")
    got = {cfg.acs_bits_text(c.cleared) for c in plan.changes}
    assert got == ({cleared} if cleared else set())
    assert plan.verified


def test_no_common_bridge_is_not_fixable() -> None:
    topo = examples.load("intel-2socket")
    eps = [d for d in topo.endpoints if d.class_code >> 8 == 0x0302]
    a, b = eps[0].bdf, eps[-1].bdf
    assert not _has_common(topo, a, b)
    plan = plan_fix(topo, [a, b])
    assert not plan.changes and plan.config_acs is None
    assert {(p.provider, p.client) for p in plan.unfixable} == {(a, b), (b, a)}
    assert all("no common upstream bridge" in p.reason for p in plan.unfixable)


def test_unknown_acs_is_flagged() -> None:
    topo = generate_machine(12, seed=3, config_size_64_probability=1.0, acs_probability=1.0).topology()
    eps = [d.bdf for d in topo.endpoints]
    plan = plan_fix(topo, eps)
    assert not plan.changes  # unreadable ACS is read as "no ACS": nothing to clear
    assert plan.unknown_ports and not plan.certain
    assert all(not topo[b].acs_known for b in plan.unknown_ports)


def test_config_acs_parser_follows_the_kernel() -> None:
    # Documentation/admin-guide/kernel-parameters.txt: 10x@pci:0:0 sets RR, clears TB, leaves SV
    assert parse_config_acs("10x@pci:0:0") == [(0b110, 0b100, "pci:0:0")]
    assert parse_config_acs("0@0000:01:00.0;1x@02:00.0") == [(1, 0, "0000:01:00.0"), (2, 2, "02:00.0")]
    with pytest.raises(ValueError, match="missing"):
        parse_config_acs("101")
    with pytest.raises(ValueError, match="invalid ACS flags"):
        parse_config_acs("10y@0000:01:00.0")
    with pytest.raises(ValueError, match="specified"):
        parse_config_acs("10000000@0000:01:00.0")  # bit 7 is past DT
    assert apply_config_acs(0x1D, 0x0C, 0x00) == 0x11


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "fix", "--example", "acs-redirect", "03:00.0", "04:00.0", "08:00.0", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["schema"] == "p2pdma.fix/1" and doc["kernel"] in ("latest", "7.3")
    assert doc["devices"] == ["0000:03:00.0", "0000:04:00.0", "0000:08:00.0"]
    assert doc["summary"]["pairs"] == 6 and doc["verified"] is True
    assert [c["bdf"] for c in doc["changes"]] == ["0000:02:00.0", "0000:02:01.0"]
    assert doc["changes"][0]["acs_ctrl_before"] == "0x001d" and doc["changes"][0]["acs_ctrl_after"] == "0x0011"
    assert doc["config_acs"].startswith("pci=config_acs=xx100x1@0000:02:00.0")
    assert {(p["provider"], p["client"]) for p in doc["pairs"]} == {
        ("0000:03:00.0", "0000:04:00.0"), ("0000:04:00.0", "0000:03:00.0")}
    assert all(p["after"] == "BUS_ADDR" for p in doc["pairs"])
    [stuck] = doc["unfixable"]  # the other socket's root port: one cause, four ordered pairs
    assert stuck["map_type"] == "THRU_HOST_BRIDGE" and len(stuck["pairs"]) == 4
    assert "no common upstream bridge" in stuck["reason"] and doc["summary"]["unfixable"] == 4
    merged = {tuple(m["devices"]) for m in doc["iommu_groups"]["merged"]}
    assert merged == {("0000:02:00.0", "0000:03:00.0"), ("0000:02:01.0", "0000:04:00.0")}
    assert doc["iommu_groups"]["direct_across_groups"] == [["0000:03:00.0", "0000:04:00.0"]]
    assert doc["iommu"]["active"] is None  # a spec does not say
    assert doc["vm"]["guest"] is False


def test_cli_text_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "fix", "--example", "acs-redirect", "03:00.0", "04:00.0")
    assert code == 0
    assert "pci=config_acs=xx100x1@0000:02:00.0;xx100x1@0000:02:01.0" in out
    assert "setpci -s 0000:02:00.0 ECAP_ACS+0x6.w=0000:000c" in out
    assert "could no longer be assigned to different VMs" in out
    code, out, _ = _run(capsys, "fix", "--example", "intel-2socket", "--all-pairs", "--kernel", "classic")
    assert code == 0 and "pairs no ACS change can help" in out
    for argv, msg in (
        (["fix", "--example", "acs-redirect", "03:00.0"], "two or more"),
        (["fix", "--example", "acs-redirect", "03:00.0", "77:00.0"], "unknown device"),
        (["fix", "--example", "acs-redirect", "--all-pairs", "03:00.0"], "not both"),
    ):
        code, out, err = _run(capsys, *argv)
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1
