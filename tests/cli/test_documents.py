"""The JSON documents the commands print: each validates against its published JSON Schema (a small
validator for the subset the schemas use: jsonschema is not a dependency), ``--schema 1`` is the old
writer's bytes, ``p2pdma.matrix/2`` holds each reason once and counts distinct ordered pairs, ``--csv``."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from p2pdma import schemas
from p2pdma.cli import main
from p2pdma.examples import names

TREE_137 = "32em64t-2n8c+dax+nvme+mic+dimms.tar.bz2"
# sha256 of `p2pdma matrix --example acs-redirect --json` as commit 95dfc4f (before p2pdma.matrix/2) printed it
# on a machine without pci.ids (the built-in names)
GOLDEN_V1 = {"acs-redirect": "65ec3bb4417ea53d96f754833813c5ffc24a60c16ae7c77faf7bfac3870cd1be",
             "gpu8-switches": "eb553ee819025124fc1675ae28409c7011536b25b715b6961460716756402a40"}

TYPES: dict[str, Any] = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def validate(doc: Any, schema: dict[str, Any], root: dict[str, Any] | None = None, where: str = "$") -> list[str]:
    """Errors of ``doc`` against ``schema``: type, const, enum, pattern, minimum, required, properties,
    additionalProperties (bool or schema), items, $ref to #/$defs/...; the subset our schemas use."""
    root = schema if root is None else root
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        return validate(doc, root["$defs"][name], root, where)
    errs: list[str] = []
    if "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        ok = False
        for k in kinds:
            if k == "integer":
                ok |= isinstance(doc, int) and not isinstance(doc, bool)
            elif k == "number":
                ok |= isinstance(doc, int | float) and not isinstance(doc, bool)
            else:
                ok |= isinstance(doc, TYPES[k]) and not (k != "boolean" and isinstance(doc, bool))
        if not ok:
            return [f"{where}: {doc!r:.60} is not {kinds}"]
    if "const" in schema and doc != schema["const"]:
        errs.append(f"{where}: {doc!r} != {schema['const']!r}")
    if "enum" in schema and doc not in schema["enum"]:
        errs.append(f"{where}: {doc!r} not in {schema['enum']}")
    if "pattern" in schema and isinstance(doc, str) and not re.search(schema["pattern"], doc):
        errs.append(f"{where}: {doc!r} does not match {schema['pattern']}")
    if "minimum" in schema and isinstance(doc, int | float) and doc < schema["minimum"]:
        errs.append(f"{where}: {doc} < {schema['minimum']}")
    if isinstance(doc, dict):
        errs += [f"{where}: missing {k}" for k in schema.get("required", []) if k not in doc]
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for k, v in doc.items():
            if k in props:
                errs += validate(v, props[k], root, f"{where}.{k}")
            elif extra is False:
                errs.append(f"{where}: unexpected key {k}")
            elif isinstance(extra, dict):
                errs += validate(v, extra, root, f"{where}.{k}")
    if isinstance(doc, list) and "items" in schema:
        for i, x in enumerate(doc):
            errs += validate(x, schema["items"], root, f"{where}[{i}]")
            if len(errs) > 20:
                break
    return errs


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def doc_of(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    parsed: dict[str, Any] = json.loads(out)
    return parsed


def check(doc: dict[str, Any]) -> None:
    errs = validate(doc, schemas.load(doc["schema"]))
    assert errs == [], errs[:5]


def test_the_validator_notices_what_it_checks() -> None:
    schema = schemas.load("p2pdma.examples/1")
    good = {"schema": "p2pdma.examples/1", "tool_version": "0.1.0",
            "examples": [{"name": "x", "description": "", "functions": 1, "endpoints": 1, "default": True}]}
    assert validate(good, schema) == []
    bad = json.loads(json.dumps(good))
    bad["schema"] = "p2pdma.examples/2"
    bad["examples"][0]["functions"] = -1
    bad["examples"][0]["default"] = 1
    bad["examples"][0]["extra"] = 0
    del bad["tool_version"]
    got = validate(bad, schema)
    assert len(got) == 5 and any("missing tool_version" in e for e in got)
    assert validate(True, {"type": "integer"}) and validate(3, {"type": ["integer", "null"]}) == []


def test_every_schema_is_shipped_as_package_data() -> None:
    folder = Path(schemas.__file__).parent
    assert sorted(p.name for p in folder.glob("*.schema.json")) == sorted(
        schemas.file_name(d) for d in schemas.DOCUMENTS)
    for d in schemas.DOCUMENTS:
        s = schemas.load(d)
        assert s["title"] == d and s["$schema"].endswith("2020-12/schema")
    with pytest.raises(KeyError):
        schemas.load("p2pdma.nothing/1")
    # hatch packages src/p2pdma whole: nothing in the config or .gitignore leaves *.json out
    root = Path(__file__).parents[2]
    pyproject = (root / "pyproject.toml").read_text()
    assert 'packages = ["src/p2pdma"]' in pyproject and "exclude" not in pyproject
    assert "json" not in (root / ".gitignore").read_text()


@pytest.mark.parametrize("example", names())
def test_matrix_v2_explain_topo_validate_on_every_example(capsys: pytest.CaptureFixture[str], example: str) -> None:
    v2 = doc_of(capsys, "matrix", "--example", example, "--json")
    check(v2)
    n = len(v2["devices"])
    assert v2["schema"] == "p2pdma.matrix/2" and v2["tool_version"] and v2["machine"] == example
    assert len(v2["pairs"]) == n * (n - 1) == v2["counts"]["pairs"]
    assert all(p["provider"] != p["client"] for p in v2["pairs"])
    c = v2["counts"]
    assert c["BUS_ADDR"] + c["THRU_HOST_BRIDGE"] + c["NOT_SUPPORTED"] == c["pairs"] and c["self"] == n
    for k in ("BUS_ADDR", "THRU_HOST_BRIDGE", "NOT_SUPPORTED"):
        assert c[k] == sum(1 for p in v2["pairs"] if p["map_type"] == k)
    assert c["uncertain"] == sum(1 for p in v2["pairs"] if not p["certain"])
    # each reason once, every one used
    keys = [json.dumps(r, sort_keys=True) for r in v2["reasons"]]
    assert len(set(keys)) == len(keys)
    assert {p["reason"] for p in v2["pairs"]} == set(range(len(keys)))
    # the reason a pair refers to is explain's reason
    for p in v2["pairs"][:3]:
        e = doc_of(capsys, "explain", p["provider"], p["client"], "--example", example, "--json")
        check(e)
        r = v2["reasons"][p["reason"]]
        assert (e["reason"], e["fix"], e["map_type"]) == (r["reason"], r["fix"], p["map_type"])
        assert e["provider_device"]["bdf"] == p["provider"]
    check(doc_of(capsys, "topo", "--example", example, "--json"))
    check(doc_of(capsys, "matrix", "--example", example, "--json", "--schema", "1"))


def test_schema_1_is_the_old_writer_byte_for_byte(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from p2pdma import examples
    from p2pdma.cli.matrix import write_matrix_json
    from p2pdma.pci import ids

    # the names come from this machine's pci.ids when it has one: the golden bytes use the built-ins
    monkeypatch.setattr(ids, "PCI_IDS_PATHS", ())

    for example, sha in GOLDEN_V1.items():
        code, out, _ = run(capsys, "matrix", "--example", example, "--json", "--schema", "1", "--kernel", "7.2")
        assert code == 0 and hashlib.sha256(out.encode()).hexdigest() == sha, example
        buf = io.StringIO()
        write_matrix_json(examples.load(example), "7.2", False, buf)
        assert out == buf.getvalue()
    code, out, _ = run(capsys, "matrix", "--example", "gpu8-switches", "--json", "--schema", "1", "--all",
                       "--kernel", "7.2")
    buf = io.StringIO()
    write_matrix_json(examples.load("gpu8-switches"), "7.2", True, buf)
    assert code == 0 and out == buf.getvalue()
    code, out, err = run(capsys, "matrix", "--example", "gpu8-switches", "--json", "--schema", "1", "--class", "gpu")
    assert code == 2 and out == "" and "--schema 2" in err and err.count("\n") == 1


def test_fix_examples_and_lists_validate(capsys: pytest.CaptureFixture[str]) -> None:
    fix = doc_of(capsys, "fix", "--example", "acs-redirect", "GPU0", "GPU1", "--json")
    check(fix)
    assert fix["tool_version"] and fix["aliases"] == {"0000:03:00.0": "GPU0", "0000:04:00.0": "GPU1"}
    check(doc_of(capsys, "examples", "--json"))
    lst = doc_of(capsys, "check", "--list", "--json")
    check(lst)
    assert lst["models"] and lst["invariants"]
    assert [x["name"] for x in lst["liveness"]] == ["revoke-completes"]
    assert main(["check", "--list"]) == 0
    text = capsys.readouterr().out
    assert "liveness" in text and "  revoke-completes " in text and "  sanitizer-clean " in text
    sims = doc_of(capsys, "simulate", "--list", "--json")
    check(sims)
    assert [s["name"] for s in sims["scenarios"] if s["default"]] == ["seed-story"]
    checked = doc_of(capsys, "check", "dmabuf-revoke", "--max-states", "200", "--json")
    check(checked)
    assert checked["tool_version"] and checked["states"] == 200 and checked["complete"] is False
    code, out, _ = run(capsys, "simulate", "--json")
    simulated = json.loads(out)
    check(simulated)
    assert simulated["tool_version"] and simulated["steps"]


def test_v2_reasons_are_shared_on_the_137_function_tree(shared_hwloc: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = str(shared_hwloc / TREE_137)
    v2 = doc_of(capsys, "matrix", "--root", tree, "--json", "--all-functions")
    check(v2)
    n = len(v2["devices"])
    assert n == 128 and len(v2["pairs"]) == n * (n - 1)
    assert len(v2["reasons"]) < len(v2["pairs"]) // 50  # a few hundred distinct reasons, not one per pair
    default = doc_of(capsys, "matrix", "--root", tree, "--json")
    check(default)
    assert default["selection"]["filtered"] and default["selection"]["hidden"] == 122
    assert [d["alias"] for d in default["devices"]] == ["NVME0", "NIC0", "NIC1", "GPU0", "NIC2", "ACCEL0"]
    nic2 = default["devices"][4]
    assert nic2["os_names"] == ["ib0", "mlx4_0"] and nic2["numa_node"] == 1 and nic2["local_cpulist"] == "8-15"
    assert nic2["driver"] == "mlx4_core"
    assert default["devices"][0]["numa_node"] is None  # -1 in sysfs: no affinity


def test_csv_is_the_pair_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "matrix", "--example", "acs-redirect", "--csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    v2 = doc_of(capsys, "matrix", "--example", "acs-redirect", "--json")
    assert len(rows) == len(v2["pairs"]) == 30
    by = {(p["provider"], p["client"]): p for p in v2["pairs"]}
    for r in rows:
        p = by[(r["provider"], r["client"])]
        assert r["map_type"] == p["map_type"] and int(r["distance"]) == p["distance"]
        assert r["reason"] == v2["reasons"][p["reason"]]["reason"]
    assert rows[0]["provider_alias"] == "GPU0" and rows[0]["client_alias"] == "GPU1"
    code, out, err = run(capsys, "matrix", "--example", "acs-redirect", "--csv", "--json")
    assert code == 2 and "not both" in err


def test_every_document_says_which_kernel_profile_ran_and_why(capsys: pytest.CaptureFixture[str],
                                                             tmp_path: Path) -> None:
    """kernel and kernel_source in matrix/2, explain/1, fix/1, topo/1 and the text headers: the
    capture's osrelease, the --kernel option, or the default on an input without a release."""
    from p2pdma import examples
    from p2pdma.sources.sysfs import write_root

    for argv in (["matrix"], ["explain", "GPU0", "GPU1"], ["fix", "GPU0", "GPU1"], ["topo"]):
        d = doc_of(capsys, *argv, "--example", "gpu8-switches", "--json")
        assert (d["kernel"], d["kernel_source"]) == ("7.3", "no kernel release in this input: newest mainline profile")
        assert list(d).index("kernel_source") == list(d).index("kernel") + 1
        check(d)
        d = doc_of(capsys, *argv, "--example", "gpu8-switches", "--json", "--kernel", "6.1")
        assert (d["kernel"], d["kernel_source"]) == ("6.1", "--kernel 6.1")
    m = examples.load_spec("gpu8-switches")
    write_root(tmp_path / "root", m.raws, cpu=m.cpu, kernel_release="6.1.0-50-amd64")
    d = doc_of(capsys, "matrix", "--root", str(tmp_path / "root"), "--json")
    assert d["kernel"] == "6.1" and "6.1.0-50-amd64" in d["kernel_source"]
    assert main(["matrix", "--root", str(tmp_path / "root")]) == 0
    assert "kernel 6.1: " in capsys.readouterr().out.splitlines()[1]


def test_matrix_2_is_streamed_with_the_same_bytes() -> None:
    """write_matrix_document_v2() (what `matrix --json` runs) writes json.dumps(matrix_document_v2())
    byte for byte, on every example, with every function in view too."""
    from p2pdma import examples
    from p2pdma.p2p.matrix import compute_matrix
    from p2pdma.report.documents import matrix_document_v2, write_matrix_document_v2

    for name in names():
        topo = examples.load(name)
        for include in (False, True):
            m = compute_matrix(topo, "7.3", include_bridges=include)
            buf = io.StringIO()
            write_matrix_document_v2(m, buf)
            assert buf.getvalue() == json.dumps(matrix_document_v2(m)) + "\n", (name, include)
