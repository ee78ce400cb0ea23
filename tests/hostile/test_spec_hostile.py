"""Wrong-typed and out-of-range spec fields, huge BARs, VF bombs, deep bridge chains, BDF spellings:
each refused with one line naming the field's path."""

from __future__ import annotations

import copy
import random
import resource
import time
from typing import Any

import pytest
import yaml

from p2pdma.errors import InputError
from p2pdma.sources import spec as S
from p2pdma.sources.spec import parse_spec


def base() -> dict[str, Any]:
    return {"name": "t", "host_bridges": [{"name": "pci0000:00", "devices": [
        {"bdf": "0000:00:01.0", "id": "8086:347a", "port": "root-port", "link": [16.0, 16], "children": [
            {"bdf": "0000:01:00.0", "id": "10de:2330", "port": "endpoint", "class": 0x030200, "link": [16.0, 16],
             "acs": {"cap": 0x5f, "ctrl": 0}, "bars": [{"size": "16M", "bits": 64, "prefetch": True}]},
        ]},
    ]}]}


DEV = "host_bridges[0].devices[0].children[0]"
BAD: list[tuple[str, Any, str]] = [
    ("link", "x", r"expected \[GT/s, width\]"),
    ("link", [8], r"expected \[GT/s, width\]"),
    ("link", [7.0, 16], r"link\[0\]: 7.0 is not a PCIe link speed"),
    ("link", [16.0, -1], r"link\[1\]: -1 is out of range \(1..32\)"),
    ("link", [16.0, 10**6], r"link\[1\]: .* is out of range"),
    ("link", ["16", 16], "is not a PCIe link speed"),
    ("id", "10de:23301", "16-bit hex"),
    ("id", "-1:2330", "16-bit hex"),
    ("id", 0x10DE, "16-bit hex"),
    ("class", 0x1000000, r"class: .* is out of range"),
    ("class", -1, "out of range"),
    ("class", "display", "expected a number"),
    ("acs", {"cap": 0x10000}, r"acs.cap: .* out of range"),
    ("acs", {"ctrl": -2}, r"acs.ctrl: .* out of range"),
    ("acs", {"egress": list(range(2000))}, r"acs.egress: 2000 entries, at most 8"),
    ("acs", {"cap": 0x0420, "egress": [1, 2]}, "but the capability's vector has 4 bits"),
    ("acs", {"egress": "ff"}, "expected a list"),
    ("port_number", 1 << 40, r"port_number: .* out of range \(0..255\)"),
    ("port_number", [1], "expected a number"),
    ("bars", [{"size": 1 << 200, "bits": 64}], r"bars\[0\].size: .* out of range"),
    ("bars", [{"size": 3}], "power of two"),
    ("bars", [{"size": -4096}], "out of range"),
    ("bars", [{"size": "big"}], "expected a number"),
    ("bars", [{"size": 4096, "prefetch": "yes"}], "expected true or false"),
    ("bars", [{"size": 4096, "bits": 48}], "32 or 64 bits"),
    ("bars", [{"size": 4096, "start": 0x1001}], "not aligned"),
    ("bars", [{"size": 4096, "bits": 64}] * 4, "more than six BAR slots"),
    ("config_size", 1024, "must be 64, 256 or 4096"),
    ("multifunction", "true", "expected true or false"),
    ("iommu_group", -3, "out of range"),
    ("driver", ["nvidia"], "expected a string"),
    ("lnk", [16.0, 16], "unknown field 'lnk'"),
    ("port", 5, "unknown port 5"),
    ("bdf", "0000:01:00.0\n", "not a PCI address"),
    ("bdf", "0000:01:20.0", "device number 0x20 is past 0x1f"),
    ("bdf", 10, "must be a string"),
    ("vfs", {"count": 70000}, r"vfs.count: .* out of range"),
    ("vfs", {"count": "many"}, "expected a number"),
]


@pytest.mark.parametrize(("field", "value", "message"), BAD, ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(BAD)])
def test_wrong_fields_name_their_path(field: str, value: Any, message: str) -> None:
    s = base()
    s["host_bridges"][0]["devices"][0]["children"][0][field] = value
    with pytest.raises(InputError, match=message) as ei:
        parse_spec(s, where="m.yaml")
    line = str(ei.value)
    assert line.startswith(f"m.yaml: {DEV}") and "\n" not in line and len(line) < 400, line


def test_good_base_and_edge_values_are_accepted() -> None:
    s = base()
    d = s["host_bridges"][0]["devices"][0]["children"][0]
    d.update({"link": [64.0, 32], "port_number": 255, "class": 0xFFFFFF, "id": "ffff:0",
              "acs": {"cap": 0xFFFF, "ctrl": 0xFFFF, "egress": [0xFFFFFFFF] * 8},
              "bars": [{"size": 1 << 63, "bits": 64}]})
    s["host_bridges"][0]["mem_base"] = 1 << 63
    t = parse_spec(s).topology()
    assert t["0000:01:00.0"].bars[0].size == 1 << 63


def test_bdf_spellings_are_one_function() -> None:
    s = base()
    s["host_bridges"][0]["devices"].append({"bdf": "00000000:00:01.0"})
    with pytest.raises(InputError, match=r"duplicate bdf 0000:00:01.0 \(also .*devices\[0\].bdf\)"):
        parse_spec(s)
    s = base()
    s["host_bridges"][0]["devices"][0]["bdf"] = "00000000:00:01.0"
    bdfs = {r.bdf for r in parse_spec(s).raws}
    assert bdfs == {"0000:00:01.0", "0000:01:00.0"}


def test_huge_bars_exhaust_the_window_with_a_named_error() -> None:
    s = base()
    d = s["host_bridges"][0]["devices"][0]["children"][0]
    d["bars"] = [{"size": 1 << 63, "bits": 64}, {"size": 1 << 63, "bits": 64}]
    s["host_bridges"][0]["mem_base"] = 1 << 63
    with pytest.raises(InputError, match=r"bars\[1\]: BARs exceed the 64-bit address space"):
        parse_spec(s)


def test_a_vf_bomb_is_refused_before_memory_is_used() -> None:
    devs = [{"bdf": f"0000:00:{i:02x}.0", "id": "15b3:101d", "vfs": {"count": 65000, "id": "15b3:101e"}}
            for i in range(0, 20)] + [{"bdf": f"0000:00:{i:02x}.1", "vfs": {"count": 65000}} for i in range(20)]
    text = yaml.safe_dump({"host_bridges": [{"name": "pci0000:00", "devices": devs}]})
    assert len(text) < 8000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=f"more than {S.MAX_FUNCTIONS} functions .*the limit"):
        parse_spec(yaml.safe_load(text))
    assert time.perf_counter() - t0 < 0.5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 16 << 10  # KiB


def test_vfs_past_bus_ff_are_refused_before_they_are_built() -> None:
    s = base()
    s["host_bridges"][0]["devices"][0]["children"][0]["vfs"] = {"count": 65535}
    with pytest.raises(InputError, match=r"vfs.count: 65535 VFs from 01:00.1 would sit past bus ff"):
        parse_spec(s, max_functions=1 << 20)


def test_a_deep_bridge_chain_is_refused_with_its_limit() -> None:
    leaf: dict[str, Any] = {"bdf": "0000:ff:00.0"}
    for depth in range(5000):
        leaf = {"bdf": f"0000:{depth % 250:02x}:00.0", "port": "switch-downstream", "children": [leaf]}
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=f"bridges nested deeper than {S.MAX_BRIDGE_DEPTH}"):
        parse_spec({"host_bridges": [{"name": "pci0000:00", "devices": [leaf]}]})
    assert time.perf_counter() - t0 < 1


@pytest.mark.parametrize("seed", range(30))
def test_random_mutations_fail_only_with_input_errors(seed: int) -> None:
    """A random field of the good spec replaced by a random value: a result or an InputError, never
    another exception."""
    r = random.Random(seed)
    s = copy.deepcopy(base())
    nodes: list[tuple[dict[str, Any] | list[Any], Any]] = []

    def collect(o: Any) -> None:
        if isinstance(o, dict):
            for k, v in o.items():
                nodes.append((o, k))
                collect(v)
        elif isinstance(o, list):
            for i, v in enumerate(o):
                nodes.append((o, i))
                collect(v)

    collect(s)
    junk = [None, -1, 1 << 70, "x", "\xff\n", [], {}, [1, 2, 3], {"a": 1}, True, 3.5, "0x" + "f" * 40, "1E"]
    for _ in range(r.randint(1, 3)):
        holder, key = r.choice(nodes)
        holder[key] = r.choice(junk)  # type: ignore[index]
    try:
        parse_spec(s)
    except InputError as exc:
        assert "\n" not in str(exc)
