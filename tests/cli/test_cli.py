"""The command line: every command on the examples and live /sys, the JSON contract, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from p2pdma.cli import main
from p2pdma.examples import names

PAIR_KEYS = {"provider", "client", "map_type", "distance", "acs_ports", "reason"}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_matrix_json_contract(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "matrix", "--example", "gpu8-switches", "--json", "--schema", "1")
    assert code == 0
    doc = json.loads(out)
    # auto on an example: the newest mainline profile
    assert doc["schema"] == "p2pdma.matrix/1" and doc["kernel"] == "7.3"
    devs = doc["devices"]
    assert devs and all({"bdf", "vendor", "device", "class", "kind"} <= set(d) for d in devs)
    assert all(d["kind"] == "endpoint" for d in devs)
    n = len(devs)
    assert len(doc["pairs"]) == n * n
    bdfs = {d["bdf"] for d in devs}
    seen = set()
    for p in doc["pairs"]:
        assert PAIR_KEYS <= set(p)
        assert p["map_type"] in ("BUS_ADDR", "THRU_HOST_BRIDGE", "NOT_SUPPORTED")
        assert isinstance(p["distance"], int) and isinstance(p["certain"], bool)
        seen.add((p["provider"], p["client"]))
        if p["provider"] == p["client"]:
            assert p["distance"] == 0
    assert seen == {(a, b) for a in bdfs for b in bdfs}


def test_matrix_all_adds_bridges(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "matrix", "--example", "gpu8-switches", "--json", "--all", "--kernel", "classic")
    doc = json.loads(out)
    assert doc["kernel"] == "7.3"  # classic is an alias of the newest mainline profile
    assert any(d["kind"] == "bridge" for d in doc["devices"])


def test_every_command_on_every_example(capsys: pytest.CaptureFixture[str]) -> None:
    for name in names():
        for cmd in ("topo", "matrix"):
            code, out, err = run(capsys, cmd, "--example", name)
            assert code == 0 and out.strip(), (cmd, name, err)


def test_table_cells_and_legend(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "matrix", "--example", "gpu8-switches")
    assert code == 0
    assert "Legend" in out and " X" in out and "B4" in out
    assert "pairs: BUS_ADDR" in out


def test_explain_json_has_path(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "matrix", "--example", "acs-redirect", "--json")
    doc = json.loads(out)
    thru = next(p for p in doc["pairs"] if p["map_type"] != "BUS_ADDR")
    code, out, _ = run(capsys, "explain", thru["provider"], thru["client"], "--example", "acs-redirect", "--json")
    assert code == 0
    v = json.loads(out)
    assert v["provider"] == thru["provider"] and v["map_type"] == thru["map_type"]
    assert v["path"][0] == thru["provider"] and v["path"][-1] == thru["client"]
    code, out, _ = run(capsys, "explain", thru["provider"], thru["client"], "--example", "acs-redirect")
    assert "map type: " in out and "why: " in out


def test_examples_lists_the_nine(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "examples", "--json")
    doc = json.loads(out)
    assert {e["name"] for e in doc["examples"]} == {
        "gpu8-switches", "acs-redirect", "intel-2socket", "amd-zen", "sriov-nic", "unlisted-hostbridge",
        "grace-hostbridge", "spr-dsa-hostbridge", "zhaoxin-hostbridge"}
    assert [e["name"] for e in doc["examples"] if e["default"]] == ["gpu8-switches"]


@pytest.mark.parametrize(
    "argv",
    [
        ["explain", "0000:ff:00.0", "0000:01:00.0", "--example", "gpu8-switches"],
        ["matrix", "--example", "no-such-machine"],
        ["topo", "--root", "/nonexistent/root"],
        ["matrix", "--spec", "/nonexistent.yaml"],
    ],
)
def test_bad_input_exits_2_with_one_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("p2pdma: ")


def test_bad_spec_file_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "m.yaml"
    f.write_text("host_bridges: [ {name: pci0000:00, devices: [ {bdf: zz} ] } ]\n")
    code, _, err = run(capsys, "matrix", "--spec", str(f))
    assert code == 2 and "not a PCI address" in err and err.count("\n") == 1
    f.write_text("{unclosed: [\n")
    code, _, err = run(capsys, "matrix", "--spec", str(f))
    assert code == 2 and "not valid YAML" in err and err.count("\n") == 1


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["matrix", "--kernel", "ancient"])
    assert e.value.code == 2


def test_live_matrix_runs(capsys: pytest.CaptureFixture[str]) -> None:
    if not Path("/sys/bus/pci/devices").is_dir():
        pytest.skip("no /sys/bus/pci here")
    code, out, _ = run(capsys, "matrix", "--json", "--schema", "1")
    assert code == 0 and json.loads(out)["schema"] == "p2pdma.matrix/1"


def test_console_script_installed() -> None:
    exe = Path(sys.executable).with_name("p2pdma")
    r = subprocess.run([str(exe), "examples"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "gpu8-switches" in r.stdout
    r = subprocess.run([str(exe), "explain", "x", "y", "--example", "gpu8-switches"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
