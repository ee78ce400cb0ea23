"""`certain` on the real machines of ../shared/data/hwloc: their config files stop at 64 bytes, so every
pair below a common bridge is `certain: false` with exactly its path's ports listed; a pair without
one is decided by the CPU or the whitelist, so it is certain exactly when the CPU decides or both host
bridge devices are in the input (else `unknown` names the missing device).
Checked on the tarballs, their hwloc XML exports and
through `matrix --json`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p2pdma.cli import main
from p2pdma.p2p.decide import MapType, calc_map_type_and_dist
from p2pdma.p2p.matrix import compute_matrix
from p2pdma.pci.topology import Topology
from p2pdma.sources.hwloc import read_hwloc
from p2pdma.sources.sysfs import read_root


def _expected_unknown(topo: Topology, p: str, c: str) -> tuple[str, ...] | None:
    """The ports calc_map_type_and_dist() visits (provider up to the common bridge, then the client
    side bottom-up) when a common bridge exists, else None."""
    pc = [d.bdf for d in topo.chain(p)]
    cc = [d.bdf for d in topo.chain(c)]
    common = next((x for x in pc if x in cc), None)
    if common is None:
        return None
    return (*pc[: pc.index(common) + 1], *cc[: cc.index(common)])


def _check_machine(topo: Topology) -> int:
    """Every ordered pair of endpoints: certain iff no common bridge; unknown ports = the path."""
    eps = [d.bdf for d in topo.endpoints]
    m = compute_matrix(topo)
    uncertain = 0
    for i, p in enumerate(eps):
        for j, c in enumerate(eps):
            v = calc_map_type_and_dist(topo, p, c)
            want = _expected_unknown(topo, p, c)
            if want is None:
                hbs = {topo[p].host_bridge, topo[c].host_bridge}
                hb_known = all(topo.host_bridge(h).host_bridge_dev_known for h in hbs)
                assert v.unknown_ports == (), (p, c)
                if v.via == "cpu" or hb_known:
                    assert v.certain and v.unknown == (), (p, c)
                else:
                    assert not v.certain and v.unknown == ("host bridge device not in this input",), (p, c)
                    assert v.hints and "capture the machine" in v.hints[0]
                    uncertain += 1
            else:
                assert not v.certain and v.unknown_ports == want, (p, c, v.unknown_ports)
                assert v.map_type == MapType.BUS_ADDR  # read as if no port had ACS
                uncertain += 1
            assert bool(m.certain[i, j]) == v.certain
            assert v.to_json()["certain"] is v.certain
    return uncertain


@pytest.mark.parametrize(
    ("name", "pair", "ports"),
    [
        ("40intel64-2g2n4c+pcilocality", ("0000:02:00.0", "0000:02:00.1"),
         ("0000:02:00.0", "0000:00:05.0", "0000:02:00.1")),
        ("32em64t-2n8c+dax+nvme+mic+dimms", ("0000:02:00.3", "0000:02:00.0"),
         ("0000:02:00.3", "0000:00:01.1", "0000:02:00.0")),
    ],
)
def test_tarballs(real_roots: dict[str, Path], name: str, pair: tuple[str, str], ports: tuple[str, ...]) -> None:
    topo = read_root(real_roots[name])
    assert all(not d.acs_known for d in topo.devices)
    assert _check_machine(topo) > len(topo.endpoints)  # more than the self pairs
    v = calc_map_type_and_dist(topo, *pair)
    assert v.certain is False and v.unknown_ports == ports


def test_vm_tarball_has_no_uncertain_distinct_pair(real_roots: dict[str, Path]) -> None:
    topo = read_root(real_roots["2pa-pcidomain32bits"])
    assert _check_machine(topo) == len(topo.endpoints)  # only each function with itself
    assert "10000:00:04.0" in topo


def test_matrix_json_through_the_cli(real_roots: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    # the unpacked tarball (unpacking it again through --root X.tar.bz2 is slow on some file systems)
    assert main(["matrix", "--root", str(real_roots["40intel64-2g2n4c+pcilocality"]), "--json", "--schema", "1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "p2pdma.matrix/1"
    assert all(isinstance(p["certain"], bool) for p in doc["pairs"])
    by = {(p["provider"], p["client"]): p for p in doc["pairs"]}
    nic = by[("0000:02:00.0", "0000:02:00.1")]
    assert nic["certain"] is False and nic["unknown_ports"] == ["0000:02:00.0", "0000:00:05.0", "0000:02:00.1"]
    far = by[("0000:02:00.0", "0000:03:00.0")]  # different root ports: ACS cannot matter
    assert far["certain"] is True and far["unknown_ports"] == []


@pytest.mark.parametrize(
    "xml",
    ["40intel64-2g2n4c+pcilocality.xml", "24em64t-2n6c2t-pci.xml", "96em64t-4n4d3ca2co-pci.xml",
     "16intel64-manyVFs.xml"],
)
def test_hwloc_xml(shared_hwloc: Path, xml: str) -> None:
    topo = read_hwloc(shared_hwloc / xml)
    assert _check_machine(topo) > len(topo.endpoints)


def test_hwloc_xml_agrees_with_the_tarball(shared_hwloc: Path, real_roots: dict[str, Path]) -> None:
    x = read_hwloc(shared_hwloc / "40intel64-2g2n4c+pcilocality.xml")
    t = read_root(real_roots["40intel64-2g2n4c+pcilocality"])
    both = sorted({d.bdf for d in x.endpoints} & {d.bdf for d in t.endpoints})
    assert len(both) > 10
    mx, mt = compute_matrix(x, select=both), compute_matrix(t, select=both)
    # the tarball has the host bridge device, the XML does not: the XML is never more certain
    assert (~mx.certain | mt.certain).all()
    assert (mx.certain != mt.certain).any()
    assert ((mx.map_type == mt.map_type) | ~mx.certain).all()
    for p, c in (("0000:02:00.0", "0000:02:00.1"), ("0000:03:00.1", "0000:03:00.0")):
        assert calc_map_type_and_dist(x, p, c).unknown_ports == calc_map_type_and_dist(t, p, c).unknown_ports
