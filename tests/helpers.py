"""Small builders shared by tests: machines from spec dicts, as topologies or as sysfs trees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from p2pdma.pci.topology import Topology
from p2pdma.sources.spec import parse_spec
from p2pdma.sources.sysfs import read_root, write_root


def machine(host_bridges: list[dict[str, Any]], **top: Any) -> dict[str, Any]:
    """A spec dict with defaults (Intel CPU) overridable by keyword."""
    spec: dict[str, Any] = {
        "name": top.pop("name", "test"),
        "cpu": top.pop("cpu", {"vendor": "GenuineIntel", "family": 6, "model": 85}),
        "host_bridges": host_bridges,
    }
    spec.update(top)
    return spec


def as_sysfs(spec: dict[str, Any], tmp: Path) -> Topology:
    """Write the spec out as a real-looking sysfs tree under ``tmp`` and read it back."""
    m = parse_spec(spec)
    root = tmp / "root"
    write_root(root, m.raws, cpu=m.cpu, kernel_release="6.18.0-test")
    topo = read_root(root, name=m.name)
    if m.hmat:
        from dataclasses import replace

        topo = replace(topo, hmat=tuple(m.hmat))
    return topo


def as_topology(spec: dict[str, Any]) -> Topology:
    return parse_spec(spec).topology()


def hb(name: str, devices: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    d = {"name": name, "devices": devices}
    d.update(kw)
    return d


def dev(bdf: str, id: str = "10de:2330", **kw: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"bdf": bdf, "id": id, "port": kw.pop("port", "endpoint")}
    d.update(kw)
    return d
