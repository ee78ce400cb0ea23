"""`--lspci FILE`: dumps in the `lspci -x`/`-xxx`/`-xxxx` format written by the tests from the bundled
machines' config bytes; the tree rebuilt from bus numbers must give the same verdicts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from p2pdma import examples
from p2pdma.cli import main
from p2pdma.errors import SourceError
from p2pdma.p2p.decide import MapType, calc_map_type_and_dist
from p2pdma.p2p.matrix import compute_matrix
from p2pdma.pci.topology import RawFunction
from p2pdma.sources.lspci import read_lspci, topology_from_dump


def dump(raws: list[RawFunction], *, size: int = 4096, domains: bool = True, verbose: bool = False) -> str:
    """What `lspci -xxxx` (``size`` 4096), `-xxx` (256) or `-x` (64) prints for these functions."""
    out = []
    for r in raws:
        assert r.config is not None
        data = r.config[:size]
        name = r.bdf if domains else r.bdf[5:]
        out.append(f"{name} Class {r.class_code or 0:06x}: Device {r.vendor or 0:04x}:{r.device or 0:04x}")
        if verbose:
            out.append("\tSubsystem: Example\n\tFlags: bus master, fast devsel, latency 0")
        for off in range(0, len(data), 16):
            out.append(f"{off:02x}: " + " ".join(f"{b:02x}" for b in data[off:off + 16]))
        out.append("")
    return "\n".join(out)


@pytest.mark.parametrize("name", examples.names())
def test_examples_round_trip(name: str, tmp_path: Path) -> None:
    spec = examples.load_spec(name)
    want = dataclasses.replace(spec.topology(), cpu=None)  # a dump has no CPU: AMD Zen is not seen
    f = tmp_path / f"{name}.lspci"
    f.write_text(dump(spec.raws))
    got = read_lspci(f)
    assert got.name == name
    assert {d.bdf for d in got.devices} == {d.bdf for d in want.devices}
    for d in want.devices:
        g = got[d.bdf]
        assert g.parent == d.parent or d.physfn is not None, d.bdf  # VFs hang beside their PF
        assert g.acs == d.acs and g.acs_known and g.port_type == d.port_type
    for profile in ("latest", "classic"):
        a, b = compute_matrix(want, profile), compute_matrix(got, profile)
        assert a.bdfs == b.bdfs
        assert np.array_equal(a.map_type, b.map_type) and np.array_equal(a.distance, b.distance)


def test_host_bridges_from_root_buses(tmp_path: Path) -> None:
    spec = examples.load_spec("intel-2socket")
    got = topology_from_dump(dump(spec.raws), name="x")
    assert {h.name for h in got.host_bridges} == {h.name for h in spec.topology().host_bridges}


def test_short_dumps_leave_acs_unknown() -> None:
    raws = examples.load_spec("acs-redirect").raws
    for size in (64, 256):
        topo = topology_from_dump(dump(raws, size=size), name="short")
        assert not topo[("0000:02:00.0")].acs_known
        v = calc_map_type_and_dist(topo, "0000:03:00.0", "0000:04:00.0")
        assert v.map_type == MapType.BUS_ADDR and not v.certain and "0000:02:00.0" in v.unknown_ports
        assert any("ACS unknown" in w for w in topo.warnings)
    # 256 bytes next to a 4096-byte function: the dump was -xxxx as root, so there is no extended space
    mixed = dump(raws[:1], size=4096) + "\n" + dump(raws[1:], size=256)
    topo = topology_from_dump(mixed, name="mixed")
    assert topo["0000:02:00.0"].acs_known and topo["0000:02:00.0"].acs is None


def test_dump_variants_and_errors(tmp_path: Path) -> None:
    raws = examples.load_spec("acs-redirect").raws
    topo = topology_from_dump(dump(raws, domains=False, verbose=True), name="v")
    assert topo["0000:03:00.0"].parent == "0000:02:00.0"
    bad = [
        ("00:00.0 Host bridge\nzz: 00\n", "not an lspci dump line"),
        ("00: 86 80\n", "hex line before any function line"),
        ("00:00.0 x\n00: " + " ".join(["00"] * 16) + "\n40: 00\n", "gap"),
        ("hello\n", "bad.txt:1: not an lspci"),
        ("", "no PCI function"),
    ]
    for text, msg in bad:
        with pytest.raises(SourceError, match=msg):
            topology_from_dump(text, name="bad", where="bad.txt")
    with pytest.raises(SourceError, match="bad.txt:2"):
        topology_from_dump("00:00.0 x\nnot hex\n", name="bad", where="bad.txt")
    (tmp_path / "bin").write_bytes(b"\0\1\2")
    with pytest.raises(SourceError, match="binary"):
        read_lspci(tmp_path / "bin")


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "m.txt"
    f.write_text(dump(examples.load_spec("acs-redirect").raws))
    assert main(["matrix", "--lspci", str(f), "--json", "--schema", "1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    pair = next(p for p in doc["pairs"] if (p["provider"], p["client"]) == ("0000:03:00.0", "0000:04:00.0"))
    assert pair["map_type"] == "THRU_HOST_BRIDGE" and pair["certain"] is True
    assert main(["fix", "--lspci", str(f), "03:00.0", "04:00.0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["verified"] is True
    assert main(["topo", "--lspci", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("p2pdma: ") and len(err.strip().splitlines()) == 1
