"""``p2pdma simulate``: the bundled story end to end, the broken importer, the JSON contract, exit
codes, bad input as one line, machine selection, determinism."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from p2pdma.cli import main
from p2pdma.errors import InputError
from p2pdma.model import scenario as S
from tests.model.conftest import model_spec


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["simulate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def doc(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code, out, _ = run(capsys, *argv, "--json")
    return code, json.loads(out)


def write(tmp_path: Path, data: Any, name: str = "s.yaml") -> str:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(p)


def test_default_scenario_tells_the_story(capsys: pytest.CaptureFixture[str]) -> None:
    code, d = doc(capsys)
    assert code == 0
    assert d["schema"] == "p2pdma.simulate/1" and d["scenario"] == "seed-story" and d["machine"] == "gpu8-switches"
    assert set(d["bytes_by_path"]) == {"BUS_ADDR", "THRU_HOST_BRIDGE"}
    assert d["bytes_by_path"]["BUS_ADDR"] > 0 and d["bytes_by_path"]["THRU_HOST_BRIDGE"] > 0
    assert d["violations"] == [] and d["data_intact"] is True
    steps = d["steps"]
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1))
    imports = {s["args"]["name"]: s["summary"] for s in steps if s["op"] == "import"}
    assert "BUS_ADDR" in imports["rdma"] and "THRU_HOST_BRIDGE" in imports["vm"]
    reset = next(s for s in steps if s["op"] == "reset")
    assert reset["status"] == "waits"  # a read is in flight
    assert sum("move_notify" in e for e in reset["events"]) == 2  # both importers invalidated
    stopped = [s for s in steps if s["step"] > reset["step"] and s["status"] == "error"]
    assert {s["errno"] for s in stopped} == {"EFAULT", "EAGAIN"}  # the VM faults, the NIC drains
    fin = next(s for s in steps if s["op"] == "finish")
    assert fin["step"] > max(s["step"] for s in stopped)
    assert any("reset done" in e for e in fin["events"])  # the last fence lets the reset finish
    verify = next(s for s in steps if s["op"] == "verify")
    assert verify["result"] is True
    reads = [s for s in steps if s["op"] == "dma" and s["status"] == "ok" and "reads" in s["summary"]]
    assert reads and all("data as last written" in s["summary"] for s in reads)
    assert sum(s["bytes"]["BUS_ADDR"] + s["bytes"]["THRU_HOST_BRIDGE"] for s in steps) == sum(
        d["bytes_by_path"].values())


def test_default_timeline_text(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys)
    assert code == 0 and err == ""
    assert "scenario seed-story on gpu8-switches" in out
    assert "VFIO_DEVICE_RESET" in out and "move_notify" in out
    assert "violations    none" in out and "data intact   yes" in out


def test_broken_importer_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, d = doc(capsys, "broken-importer")
    assert code == 1
    assert [v["kind"] for v in d["violations"]] == ["sanitizer"]
    assert d["data_intact"] is False and d["mismatches"]
    code, out, _ = run(capsys, "broken-importer")
    assert code == 1 and "sanitizer" in out and "data intact   NO" in out


def test_runs_are_deterministic(capsys: pytest.CaptureFixture[str]) -> None:
    _, a = doc(capsys)
    _, b = doc(capsys)
    assert a == b


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--list")
    assert code == 0 and "seed-story" in out and "broken-importer" in out
    assert set(S.bundled_names()) >= {"seed-story", "broken-importer"}


BASE: dict[str, Any] = {
    "devices": {"gpu": {"bdf": "0000:03:00.0", "bind": "vfio"}, "nic": {"bdf": "0000:05:00.0", "bind": "mlx5_core"}},
    "steps": [
        {"fill": {"device": "gpu", "bar": 1, "size": "64K"}},
        {"export": {"name": "b", "device": "gpu", "bar": 1, "size": "64K"}},
        {"import": {"name": "r", "kind": "rdma", "device": "nic", "buffer": "b"}},
        {"dma": {"importer": "r", "read": 0, "size": "64K"}},
    ],
}


def scenario(**kw: Any) -> dict[str, Any]:
    d: dict[str, Any] = json.loads(json.dumps(BASE))
    d.update(kw)
    return d


def test_a_scenario_file_without_machine_runs_on_the_default(capsys: pytest.CaptureFixture[str],
                                                             tmp_path: Path) -> None:
    code, d = doc(capsys, write(tmp_path, scenario()))
    assert code == 0 and d["machine"] == "gpu8-switches" and d["scenario"] == "s"
    assert d["bytes_by_path"] == {"BUS_ADDR": 65536, "THRU_HOST_BRIDGE": 0}


def test_machine_from_the_command_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    spec = write(tmp_path, model_spec(name="small"), "machine.yaml")
    sc = scenario(devices={"gpu": {"bdf": "0000:03:00.0", "bind": "vfio"}, "nic": {"bdf": "0000:04:00.0"}})
    code, d = doc(capsys, write(tmp_path, sc), "--spec", spec)
    assert code == 0 and d["machine"] == "small" and d["bytes_by_path"]["BUS_ADDR"] == 65536
    sc["machine"] = {"spec": "machine.yaml"}  # relative to the scenario file
    code, d = doc(capsys, write(tmp_path, sc))
    assert code == 0 and d["machine"] == "small"
    code, out, err = run(capsys, write(tmp_path, scenario()), "--example", "amd-zen")
    assert code == 2 and "not in machine" in err and out == ""


def test_kernel_and_iommu_choices(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, d = doc(capsys, write(tmp_path, scenario(kernel="classic", iommu="off")))
    assert code == 0 and d["kernel"] == "classic" and d["iommu"] == "off"
    code, d = doc(capsys, write(tmp_path, scenario(kernel="classic")), "--kernel", "latest")
    assert d["kernel"] == "latest"


def test_expectations_and_refusals(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    sc = scenario()
    sc["steps"] += [
        {"decode-off": "gpu"},
        {"dma": {"importer": "r", "read": 0, "size": "4K", "expect": "ENODEV"}},  # refused, as expected
        {"dma": {"importer": "r", "read": 0, "size": "4K"}},  # refused, not a violation
        {"decode-on": {"device": "gpu", "expect": "ok"}},
        {"reset": {"device": "gpu", "expect": "waits"}},  # nothing in flight: it does not wait
    ]
    code, d = doc(capsys, write(tmp_path, sc))
    assert code == 1
    assert [(v["kind"], v["step"]) for v in d["violations"]] == [("expectation", 9)]
    assert "expected waits, got ok" in d["violations"][0]["message"]
    assert [s["errno"] for s in d["steps"][5:7]] == ["ENODEV", "ENODEV"]


def test_seeded_exporter_bug_and_unplug(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    sc = scenario()
    sc["devices"]["gpu"]["wait_for_fences"] = False
    sc["steps"] += [{"start": {"name": "x", "importer": "r", "write": 0, "size": "4K", "pattern": 5}},
                    {"reset": "gpu"}, {"finish": "x"}]
    code, d = doc(capsys, write(tmp_path, sc))
    assert code == 1 and [v["kind"] for v in d["violations"]] == ["revoke-early", "sanitizer"]
    sc = scenario()
    # 7.2: vfio_main.c:vfio_unregister_group_dev() sleeps until the user closes (request notifier)
    sc["steps"] += [{"unplug": {"device": "gpu", "expect": "waits"}}, {"close": {"device": "gpu", "expect": "ok"}},
                    {"dma": {"importer": "r", "read": 0, "size": "4K", "expect": "ENODEV"}}]
    code, d = doc(capsys, write(tmp_path, sc))
    assert code == 0 and d["violations"] == [] and d["left_in_flight"] == []
    assert not any("move_notify" in e for e in d["steps"][4]["events"])
    assert any("move_notify" in e for e in d["steps"][5]["events"])
    assert any("unplug" in e and "done" in e for e in d["steps"][5]["events"])


BAD: list[tuple[str, Any, str]] = [
    ("not yaml", "steps: [unclosed", "not valid YAML"),
    ("not a mapping", "[1, 2]", "a scenario is a YAML mapping"),
    ("no steps", {"devices": {}}, "steps is a non-empty list"),
    ("unknown top key", scenario(colour="red"), "unknown key(s) colour"),
    ("unknown op", scenario(steps=[{"explode": "gpu"}]), "unknown operation 'explode'"),
    ("two ops in a step", scenario(steps=[{"reset": "gpu", "close": "gpu"}]), "one operation"),
    ("unknown device", scenario(steps=[{"reset": "tpu"}]), "neither a declared device"),
    ("bad size", scenario(steps=[{"fill": {"device": "gpu", "bar": 1, "size": "lots"}}]), "expected a number"),
    ("undeclared buffer", scenario(steps=[{"import": {"name": "r", "kind": "rdma", "device": "nic",
                                                      "buffer": "nope"}}]), "no buffer named 'nope'"),
    ("bad kind", scenario(steps=[{"export": {"name": "b", "device": "gpu", "bar": 1, "size": "4K"}},
                                 {"import": {"name": "r", "kind": "magic", "device": "nic", "buffer": "b"}}]),
     "kind must be one of"),
    ("unknown step key", scenario(steps=[{"reset": {"device": "gpu", "hard": True}}]), "unknown key(s) hard"),
    ("bad expect", scenario(steps=[{"reset": {"device": "gpu", "expect": "EWHAT"}}]), "expect must be"),
    ("read and write", scenario(steps=[{"export": {"name": "b", "device": "gpu", "bar": 1, "size": "4K"}},
                                       {"import": {"name": "r", "kind": "rdma", "device": "nic", "buffer": "b"}},
                                       {"dma": {"importer": "r", "read": 0, "write": 0, "size": 1}}]),
     "exactly one of"),
    ("name used twice", scenario(steps=[{"export": {"name": "b", "device": "gpu", "bar": 1, "size": "4K"}},
                                        {"export": {"name": "b", "device": "gpu", "bar": 1, "size": "4K"}}]),
     "already used"),
    ("device not in machine", scenario(devices={"x": {"bdf": "0000:ee:00.0", "bind": "vfio"}},
                                       steps=[{"reset": "x"}]), "not in machine"),
    ("fill past the BAR", scenario(steps=[{"fill": {"device": "gpu", "bar": 7, "size": "4K"}}]), "no memory BAR7"),
    ("bad machine", scenario(machine="no-such-machine"), "unknown example"),
]


@pytest.mark.parametrize(("what", "content", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path, what: str,
                                          content: Any, message: str) -> None:
    code, out, err = run(capsys, write(tmp_path, content), "--json")
    assert code == 2, (what, out)
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("p2pdma: ") and message in err, err


def test_missing_file_and_unknown_name(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for arg in (str(tmp_path / "nope.yaml"), "no-such-scenario", str(tmp_path)):
        code, out, err = run(capsys, arg)
        assert code == 2 and out == "" and err.count("\n") == 1, (arg, err)


def test_size_values() -> None:
    assert S.size_value("4K", "x") == 4096 and S.size_value("2 MiB", "x") == 2 << 20
    assert S.size_value("0x1000", "x") == 4096 and S.size_value(7, "x") == 7
    for bad in ("-1", True, 1.5, "1Q", -3):
        with pytest.raises(InputError):
            S.size_value(bad, "x")
    assert S.human(4 << 20) == "4 MiB" and S.human(1536) == "1.5 KiB" and S.human(100) == "100 B"


def test_more_triggers_export_behind_a_revoke_and_the_kernel_defect_finding(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    sc = scenario()
    sc["steps"] += [
        {"start": {"name": "x", "importer": "r", "read": 0, "size": "4K"}},
        {"d3hot": {"device": "gpu", "expect": "waits"}},  # vfio_pci_set_power_state(): revoke, wait
        {"finish": "x"},
        {"d0": {"device": "gpu", "expect": "ok"}},
        {"start": {"name": "y", "importer": "r", "read": 0, "size": "4K"}},
        {"decode-off": {"device": "gpu", "expect": "waits"}},
        {"export": {"name": "late", "device": "gpu", "bar": 1, "size": "8K", "expect": "waits"}},  # memory_lock
        {"finish": "y"},
        {"import": {"name": "r2", "kind": "rdma", "device": "nic", "buffer": "late", "expect": "ENODEV"}},
        {"flr": {"device": "gpu", "expect": "ok"}},
    ]
    code, d = doc(capsys, write(tmp_path, sc))
    assert code == 0 and d["violations"] == [] and d["left_in_flight"] == [], d["violations"]
    assert "waits for memory_lock" in d["steps"][10]["summary"]
    assert d["findings"] == []
    multi = scenario(devices={"gpu": {"bdf": "0000:03:00.0", "bind": "vfio"},
                              "far": {"bdf": "0000:85:00.0", "bind": "mlx5_core"}},
                     steps=[{"export": {"name": "b", "device": "gpu", "bar": 1, "ranges": [[0, "4K"], ["8K", "4K"]]}},
                            {"import": {"name": "r", "kind": "rdma", "device": "far", "buffer": "b",
                                        "expect": "EADDRINUSE"}}])
    code, d = doc(capsys, write(tmp_path, multi))
    assert code == 0 and [f["kind"] for f in d["findings"]] == ["kernel-defect:phys-vec-iova-offset"]
    assert "offset 0" in d["findings"][0]["message"]
    code, out, _ = run(capsys, write(tmp_path, multi))  # the text summary names the finding too
    assert code == 0 and "kernel findings 1" in out and "kernel-defect:phys-vec-iova-offset: " in out
    code, out, _ = run(capsys, write(tmp_path, sc))
    assert code == 0 and "kernel findings" not in out


def test_hostile_scenario_files_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import os

    bomb = "x: &x [1, 2]\nsteps: [" + "*x, " * 300 + "]\n"  # more aliases than any budget allows
    code, out, err = run(capsys, write(tmp_path, bomb))
    assert code == 2 and "alias" in err and len(err.strip().splitlines()) == 1
    fifo = tmp_path / "f.yaml"
    os.mkfifo(fifo)
    code, out, err = run(capsys, str(fifo))
    assert code == 2 and "not a regular file" in err
    deep = "steps: " + "[" * 5000 + "]" * 5000 + "\n"
    code, out, err = run(capsys, write(tmp_path, deep))
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_scenario_machine_takes_every_form_open_machine_takes(capsys: pytest.CaptureFixture[str],
                                                              tmp_path: Path) -> None:
    from p2pdma.sources import MACHINE_KINDS
    from p2pdma.sources.spec import parse_spec
    from p2pdma.sources.sysfs import write_root

    m = parse_spec(model_spec(name="small"))
    write_root(tmp_path / "tree", m.raws, cpu=m.cpu, kernel_release="7.2.13+deb14-amd64")
    sc = scenario(devices={"gpu": {"bdf": "0000:03:00.0", "bind": "vfio"}, "nic": {"bdf": "0000:04:00.0"}},
                  machine={"root": "tree"})  # a sysfs tree beside the scenario, read by the same door as --root
    code, d = doc(capsys, write(tmp_path, sc))
    assert code == 0 and d["machine"] == "tree" and d["bytes_by_path"]["BUS_ADDR"] == 65536
    sc["machine"] = {"pcap": "x"}
    code, out, err = run(capsys, write(tmp_path, sc))
    assert code == 2 and out == "" and all(k in err for k in MACHINE_KINDS) and err.count("\n") == 1
