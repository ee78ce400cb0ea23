"""Command-line level: hostile inputs answer with exit 2 and one line on stderr, under a hang guard.
Drives ``p2pdma.cli.main``; capture's roots are written with the sysfs writer from a spec."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
import yaml

from p2pdma.cli import main
from p2pdma.sources.spec import parse_spec
from p2pdma.sources.sysfs import write_root

pytestmark = pytest.mark.usefixtures("guard")

BOMB = 'a: &a ["x","x","x","x","x","x","x","x","x","x"]\n' + "".join(
    f"{c}: &{c} [" + ", ".join([f"*{p}"] * 10) + "]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))
GOOD = ("host_bridges:\n  - name: pci0000:00\n    devices:\n"
        "      - {bdf: '0000:00:01.0', id: '8086:347a', port: root-port, link: [16.0, 16]}\n")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def one_line_exit_2(code: int, err: str) -> None:
    assert code == 2, err
    assert err and "\n" not in err and "Traceback" not in err and len(err) < 500, err


def spec_file(tmp_path: Path, text: str, name: str = "m.yaml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_a_good_spec_works(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topo", "--spec", spec_file(tmp_path, GOOD)]) == 0
    assert "0000:00:01.0" in capsys.readouterr().out


@pytest.mark.parametrize(("text", "needle"), [
    (BOMB, "refused: more than"),
    ("[" * 5000 + "]" * 5000, "nest"),
    (GOOD.replace("[16.0, 16]", '"x"'), "host_bridges[0].devices[0].link"),
    (GOOD.replace("8086:347a", "18086:347a"), "host_bridges[0].devices[0].id"),
    (GOOD.replace("link: [16.0, 16]", "link: [16.0, 16], bars: [{size: 0x" + "1" + "0" * 50 + "}]"), "size"),
    (GOOD + "      - {bdf: '00000000:00:01.0'}\n", "duplicate bdf"),
    ("host_bridges:\n  - name: pci0000:00\n    devices:\n" + "".join(
        f"      - {{bdf: '0000:00:{i:02x}.0', vfs: {{count: 65000}}}}\n" for i in range(32)), "functions"),
    ("a: !!python/object/apply:os.system ['true']\n", "not allowed"),
])
def test_hostile_specs(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needle: str) -> None:
    code, err = run(["topo", "--spec", spec_file(tmp_path, text)], capsys)
    one_line_exit_2(code, err)
    assert needle in err


def test_non_utf8_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "m.yaml"
    p.write_bytes(GOOD.encode() + b"# \xff\xfe\n")
    code, err = run(["topo", "--spec", str(p)], capsys)
    one_line_exit_2(code, err)
    assert "byte 0xff" in err


@pytest.mark.parametrize("special", ["fifo", "/dev/zero", "/", "long-component", "100k"])
def test_specs_that_are_not_files(tmp_path: Path, capsys: pytest.CaptureFixture[str], special: str) -> None:
    if special == "fifo":
        path = str(tmp_path / "m.yaml")
        os.mkfifo(path)
    elif special == "long-component":
        path = str(tmp_path / ("c" * 300 + ".yaml"))
    elif special == "100k":
        path = "d/" * 50_000 + "m.yaml"
    else:
        path = special
    code, err = run(["topo", "--spec", path], capsys)
    one_line_exit_2(code, err)


def test_a_fifo_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "s.yaml")
    os.mkfifo(path)
    code, err = run(["simulate", path], capsys)
    one_line_exit_2(code, err)


def test_a_fifo_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "m.yaml")
    os.mkfifo(path)
    code, err = run(["check", path], capsys)
    one_line_exit_2(code, err)


def test_a_yaml_bomb_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(["simulate", spec_file(tmp_path, BOMB, "s.yaml")], capsys)
    one_line_exit_2(code, err)


def test_an_empty_root_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(["topo", "--root", ""], capsys)
    one_line_exit_2(code, err)


def test_report_does_not_replace_an_existing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.html"
    out.write_text("mine")
    code, err = run(["report", "--spec", spec_file(tmp_path, GOOD), str(out)], capsys)
    assert out.read_text() == "mine"
    one_line_exit_2(code, err)
    assert "exists" in err


def test_report_force_replaces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.html"
    out.write_text("mine")
    assert main(["report", "--spec", spec_file(tmp_path, GOOD), str(out), "--force"]) == 0
    assert out.read_text() != "mine"


def test_report_to_dev_full_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    code, err = run(["report", "--spec", spec_file(tmp_path, GOOD), "/dev/full"], capsys)
    one_line_exit_2(code, err)
    assert os.path.exists("/dev/full")


def _sysfs_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    m = parse_spec(yaml.safe_load(GOOD), where="good")
    write_root(root, m.raws, cpu=m.cpu, kernel_release="7.2.13+deb14-amd64")
    return root


def test_capture_dash_writes_the_archive_to_stdout(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    root = _sysfs_root(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["capture", "--root", str(root), "-"]) == 0
    assert not (tmp_path / "-").exists()
    out = capsysbinary.readouterr().out
    with tarfile.open(fileobj=io.BytesIO(out), mode="r:gz") as tf:  # the archive went to stdout, gzip
        names = tf.getnames()
    assert "p2pdma-capture.json" in names and "sys/bus/pci/devices/0000:00:01.0" in names
    # the manifest cannot share stdout with the archive
    assert main(["capture", "--root", str(root), "-", "--json"]) == 2
    err = capsysbinary.readouterr().err.decode()
    assert "--json" in err and err.count("\n") == 1 and not (tmp_path / "-").exists()


def test_capture_refuses_to_replace_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _sysfs_root(tmp_path)
    out = tmp_path / "mine.tar.gz"
    out.write_text("mine")
    code, err = run(["capture", "--root", str(root), str(out)], capsys)
    one_line_exit_2(code, err)
    assert "--force" in err and out.read_text() == "mine"
    assert main(["capture", "--root", str(root), "--force", str(out)]) == 0
    capsys.readouterr()
    assert tarfile.is_tarfile(out)
    # something that is not a regular file is never replaced, --force or not
    link = tmp_path / "link.tar.gz"
    link.symlink_to(tmp_path / "elsewhere")
    code, err = run(["capture", "--root", str(root), "--force", str(link)], capsys)
    one_line_exit_2(code, err)
    assert link.is_symlink() and not (tmp_path / "elsewhere").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.tar.gz", "mine.tar.gz", "root"]


def test_capture_to_dev_full_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    code, err = run(["capture", "--root", str(_sysfs_root(tmp_path)), "--force", "/dev/full"], capsys)
    one_line_exit_2(code, err)
    assert os.path.exists("/dev/full") and "not a regular file" in err


@pytest.mark.parametrize("argv", [["matrix"], ["matrix", "--json"], ["matrix", "--json", "--schema", "1"],
                                  ["matrix", "--csv"], ["fix", "--all-pairs"]])
def test_views_past_max_functions_are_refused_with_the_limit_named(argv: list[str],
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run([*argv, "--example", "gpu8-switches", "--max-functions", "4"], capsys)
    one_line_exit_2(code, err)
    assert "more than --max-functions 4" in err and "raise --max-functions" in err
    assert main([*argv, "--example", "gpu8-switches", "--max-functions", "1000"]) == 0
    assert capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:  # argparse's usage error
        main([*argv, "--example", "gpu8-switches", "--max-functions", "0"])
    assert exc.value.code == 2 and "at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["matrix"], ["topo", "--json"], ["report", "-"]])
def test_stdout_on_a_full_disk_is_one_line(argv: list[str], tmp_path: Path) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    import subprocess
    import sys

    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "p2pdma", *argv, "--example", "gpu8-switches"],
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=120, cwd=tmp_path)
    one_line_exit_2(done.returncode, done.stderr.strip())
    assert "No space left on device" in done.stderr and list(tmp_path.iterdir()) == []


def test_a_refusal_is_the_only_line_notes_and_warnings_wait(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from p2pdma import examples

    m = examples.load_spec("gpu8-switches")
    root = tmp_path / "root"  # osrelease 7.2.13+deb14-amd64: a note about distribution backports
    write_root(root, m.raws, cpu=m.cpu, kernel_release="7.2.13+deb14-amd64")
    assert main(["matrix", "--root", str(root), "--all-functions"]) == 0
    captured = capsys.readouterr()
    assert "note: osrelease 7.2.13+deb14-amd64" in captured.err  # shown when the command succeeds
    code, err = run(["matrix", "--root", str(root), "--all-functions", "--max-functions", "1"], capsys)
    one_line_exit_2(code, err)
    assert "--max-functions 1" in err and "note:" not in err


@pytest.mark.parametrize("rel", ["config", "vendor", "resource", "numa_node", "/proc/cpuinfo",
                                 "/proc/sys/kernel/osrelease"])
def test_a_fifo_in_a_sysfs_root_is_refused_in_one_line(rel: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    root = _sysfs_root(tmp_path)
    dev = next(p for p in (root / "sys/devices").rglob("0000:00:01.0") if p.is_dir())
    target = root / rel[1:] if rel.startswith("/") else dev / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    os.mkfifo(target)
    code, err = run(["topo", "--root", str(root)], capsys)  # the guard fails the test if it blocks
    one_line_exit_2(code, err)
    assert "not a regular file" in err


@pytest.mark.parametrize("depth", [200, 100_000])
def test_a_deeply_nested_capture_manifest_is_named_so(depth: int, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "deep.tar"
    with tarfile.open(path, "w") as tf:
        blob = ("[" * depth + "]" * depth).encode()
        ti = tarfile.TarInfo("p2pdma-capture.json")
        ti.size = len(blob)
        tf.addfile(ti, io.BytesIO(blob))
        ti = tarfile.TarInfo("sys/bus/pci/devices")
        ti.type = tarfile.DIRTYPE
        tf.addfile(ti)
    code, err = run(["topo", "--root", str(path)], capsys)
    one_line_exit_2(code, err)
    assert "nested deeper than 128 levels" in err and "recursion" not in err
