"""What an operator reads: the devices people peer by default, names accepted everywhere, counts of
distinct ordered pairs that agree between matrix and fix, colour and width on a terminal, plain stable
output when piped, the usage with no command, and a start-up that loads neither numpy nor the model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from p2pdma import examples
from p2pdma.cli import main
from p2pdma.cli.common import Term, terminal, wrap_line
from p2pdma.errors import InputError
from p2pdma.pci import names

TREE_137 = "32em64t-2n8c+dax+nvme+mic+dimms.tar.bz2"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
REPO = Path(__file__).parents[2]
ROW = r"^  (\S+) +[0-9a-f]{2}:[0-9a-f]{2}\.[0-7] "  # a device line of the matrix: label, short BDF


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_default_view_is_the_devices_people_peer(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "matrix", "--example", "gpu8-switches")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].endswith("functions: 13 of 15")
    assert lines[1].startswith("kernel 7.3: ")
    assert lines[2] == "2 functions hidden: 2 uncore; --all-functions shows them"
    assert "0000:00:00.0" not in out and "00:00.0" not in out  # the host bridges' memory-map RCiEPs
    assert re.search(r"^  GPU0 +03:00\.0 +0 ", out, re.M) and re.search(r"^NVME0 ", out, re.M)
    code, out, _ = run(capsys, "matrix", "--example", "gpu8-switches", "--all-functions")
    assert "functions: 15" in out and "hidden" not in out and re.search(r"^  d0 +00:00\.0", out, re.M)
    code, out, _ = run(capsys, "matrix", "--example", "gpu8-switches", "--class", "nvme,nic")
    assert re.findall(ROW, out, re.M) == ["NIC0", "NIC1", "NVME0", "NIC2", "NIC3"]
    assert "10 functions hidden: 8 GPUs, 2 uncore\n" in out
    code, out, _ = run(capsys, "matrix", "--example", "gpu8-switches", "--devices", "nic1,3:0.0,d0")
    assert re.findall(ROW, out, re.M) == ["d0", "GPU0", "NIC1"]
    code, out, err = run(capsys, "matrix", "--example", "gpu8-switches", "--class", "gpus,nvmee")
    assert code == 2 and out == "" and "did you mean 'nvme'" in err and err.count("\n") == 1


def test_a_filter_keeping_one_function_shows_every_one() -> None:
    topo = examples.load("spr-dsa-hostbridge")
    assert sum(names.is_peer_device(d) for d in topo.endpoints) < 2
    sel = names.select_devices(topo)
    assert len(sel.bdfs) == len(topo.endpoints) and sel.fallback and not sel.hidden
    assert sel.summary(topo) == "fewer than two GPUs, NICs, NVMe or accelerators here: every function is shown"


def test_every_name_form_resolves(shared_hwloc: Path) -> None:
    from p2pdma.sources import open_machine

    topo = open_machine("root", str(shared_hwloc / TREE_137))
    want = "0000:82:00.0"
    for name in ("NIC2", "nic2", "mlx4_0", "ib0", "82:00.0", "82:0.0", "0:82:00.0", want):
        assert names.lookup(topo, name).bdf == want, name
    assert names.lookup(topo, "eth1").bdf == "0000:02:00.3"
    assert names.lookup(topo, "d0").bdf == topo.endpoints[0].bdf
    assert names.lookup(topo, "b0").bdf == next(d.bdf for d in topo.devices if d.is_bridge)
    with pytest.raises(InputError, match=r"did you mean mlx4_0 \(0000:82:00\.0\)"):
        names.lookup(topo, "mlx4")
    with pytest.raises(InputError, match="the list has d0..d127"):
        names.lookup(topo, "d500")


def test_explain_and_fix_take_the_matrix_labels(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "explain", "GPU0", "d0", "--example", "gpu8-switches")
    assert code == 0
    assert out.startswith("GPU0 (0000:03:00.0)  ->  d0 (0000:00:00.0)\n")  # d0: as --all-functions labels it
    assert "numa: provider NUMA 0" in out
    code, out, _ = run(capsys, "explain", "gpu0", "3:0.0", "--example", "acs-redirect", "--json")
    assert code == 0 and json.loads(out)["client"] == "0000:03:00.0"
    for argv in (["explain", "GPU9", "GPU0", "--example", "acs-redirect"],
                 ["fix", "GPU0", "NIC7", "--example", "acs-redirect"]):
        code, out, err = run(capsys, *argv)
        assert code == 2 and out == "" and err.count("\n") == 1 and "did you mean" in err
    code, out, _ = run(capsys, "fix", "gpu0", "0000:04:00.0", "--example", "acs-redirect")
    assert code == 0 and "GPU0 0000:03:00.0 -> GPU1 0000:04:00.0" in out


def _counts_agree(capsys: pytest.CaptureFixture[str], *source: str) -> dict[str, int]:
    code, out, err = run(capsys, "matrix", *source, "--json")
    assert code == 0, err
    counts = json.loads(out)["counts"]
    code, out, err = run(capsys, "fix", "--all-pairs", *source, "--json")
    assert code == 0, err
    summary = json.loads(out)["summary"]
    assert summary["pairs"] == counts["pairs"]
    assert summary["before"] == {k: counts[k] for k in ("BUS_ADDR", "THRU_HOST_BRIDGE", "NOT_SUPPORTED")}
    code, out, _ = run(capsys, "matrix", *source)
    assert (f"pairs: BUS_ADDR {counts['BUS_ADDR']}, THRU_HOST_BRIDGE {counts['THRU_HOST_BRIDGE']}, "
            f"NOT_SUPPORTED {counts['NOT_SUPPORTED']}; uncertain {counts['uncertain']}") in out
    assert f"of {counts['pairs']} distinct ordered pairs" in out
    code, out, _ = run(capsys, "fix", "--all-pairs", *source)
    assert f"ordered pairs: {counts['pairs']} (distinct" in out
    return counts


@pytest.mark.parametrize("example", examples.names())
def test_counts_agree_across_matrix_and_fix_on_every_example(capsys: pytest.CaptureFixture[str], example: str) -> None:
    c = _counts_agree(capsys, "--example", example)
    assert c["pairs"] == c["self"] * (c["self"] - 1)


def test_counts_agree_on_the_shared_trees(shared_hwloc: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trees = sorted(p for p in shared_hwloc.iterdir() if p.name.endswith((".xml", ".tar.bz2")))
    assert len(trees) >= 5
    seen = 0
    for p in trees:
        source = ("--hwloc", str(p)) if p.suffix == ".xml" else ("--root", str(p))
        code, _, _ = run(capsys, "topo", *source)
        if code != 0:  # a tree the sources refuse (the GB10 has no PCI) is refused in one line
            continue
        c = _counts_agree(capsys, *source)
        seen += 1
        if p.name == TREE_137:
            # the diagonal is not a BUS_ADDR pair any more: 2 direct pairs, not 130
            assert c["BUS_ADDR"] == 2 and c["pairs"] == 30
    assert seen >= 5


def test_the_137_function_tree_fits_120_columns_piped(shared_hwloc: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "matrix", "--root", str(shared_hwloc / TREE_137))
    assert code == 0 and "\x1b[" not in out
    assert max(len(x) for x in out.splitlines()) <= 120
    assert "122 functions hidden: 114 uncore, 6 chipset, 2 bridges; --all-functions shows them" in out
    for alias in ("NVME0", "NIC0", "NIC1", "GPU0", "NIC2", "ACCEL0"):
        assert re.search(rf"^{alias} ", out, re.M)
    assert re.search(r"^  NIC2 +82:00\.0 +1 +8-15 +ib0,mlx4_0 +mlx4_core ", out, re.M)


def _pty_run(argv: list[str], env: dict[str, str], cols: int = 0) -> str:
    """Run p2pdma with stdout on a pseudo-terminal of ``cols`` columns; what it printed."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    if cols:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, cols, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "p2pdma", *argv], stdout=slave, stderr=subprocess.DEVNULL,
                            env=env, cwd=REPO)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 1 << 16)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    os.close(master)
    return b"".join(chunks).decode().replace("\r\n", "\n")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "NO_COLOR", "TERM")}
    env.update(extra)
    return env


def test_on_a_terminal_colour_and_width(shared_hwloc: Path) -> None:
    tree = str(shared_hwloc / TREE_137)
    out = _pty_run(["matrix", "--root", tree], _env(TERM="xterm"), cols=120)
    assert "\x1b[32mB2\x1b[0m" in out and "\x1b[31m--\x1b[0m" in out  # BUS_ADDR green, NOT_SUPPORTED red
    plain = ANSI.sub("", out)
    assert max(len(x) for x in plain.splitlines()) <= 120 and "NIC2" in plain
    out = _pty_run(["matrix", "--root", tree], _env(TERM="xterm", NO_COLOR="1", COLUMNS="80"), cols=120)
    assert "\x1b[" not in out and max(len(x) for x in out.splitlines()) <= 80
    assert "122 functions hidden" in out


def test_wrapping_never_cuts_a_token() -> None:
    line = "fix: add the kernel parameter pci=config_acs=xx100x1@0000:02:00.0;xx100x1@0000:02:01.0 now"
    got = wrap_line("  " + line, 40)
    assert all(len(x) <= 40 or " " not in x.strip() for x in got)
    assert "pci=config_acs=xx100x1@0000:02:00.0;xx100x1@0000:02:01.0" in [x.strip() for x in got]
    assert " ".join(x.strip() for x in got) == line and got[1].startswith("      ")
    assert wrap_line("aaaa  bbbb", 9) == ["aaaa", "    bbbb"]  # the two spaces count
    assert wrap_line("  " + "a" * 20 + "  " + "b" * 10, 30, hang=6) == ["  " + "a" * 20, "      " + "b" * 10]
    assert Term(colour=False, width=None).wrap(line) == line  # piped: as is
    assert Term(colour=True).paint("B4", "B") == "\x1b[32mB4\x1b[0m" and Term().paint("B4", "B") == "B4"


def test_piped_output_is_plain_and_honours_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    monkeypatch.delenv("COLUMNS", raising=False)
    t = terminal(io.StringIO())
    assert (t.colour, t.width, t.table_width) == (False, None, 120)
    monkeypatch.setenv("COLUMNS", "60")
    assert terminal(io.StringIO()).table_width == 60


def test_wide_tables_split_into_column_blocks(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "60")
    code, out, _ = run(capsys, "matrix", "--example", "gpu8-switches")
    assert code == 0
    rows = [x for x in out.splitlines() if x.startswith("GPU0 ")]  # the row of GPU0, once per block of columns
    assert len(rows) >= 2 and all(len(r) <= 60 for r in rows)
    assert sum(len(r.split()) - 1 for r in rows) == 13  # every column once


def test_no_command_prints_the_usage_and_the_commands() -> None:
    r = subprocess.run([sys.executable, "-m", "p2pdma"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0 and r.stdout.startswith("usage: p2pdma")
    for cmd in ("topo", "matrix", "explain", "fix", "examples", "check", "simulate"):
        assert re.search(rf"^    {cmd} ", r.stdout, re.M), cmd


@pytest.mark.parametrize("argv", [["--help"], ["examples"], ["matrix", "--help"]])
def test_start_up_loads_neither_numpy_nor_the_model(argv: list[str]) -> None:
    code = ("import sys\nfrom p2pdma.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'numpy' or m.startswith('p2pdma.model')"
            " or m.startswith('p2pdma.fleet') or m == 'multiprocessing')\n"
            "print(repr(bad), file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0 and r.stderr.strip().splitlines()[-1] == "[]", r.stderr[-500:]


class _Tty:
    def __init__(self) -> None:
        self.text = ""

    def isatty(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def flush(self) -> None:
        pass


def test_one_progress_line_with_an_eta_cleared_at_the_end() -> None:
    from p2pdma.cli.common import Progress

    tty = _Tty()
    bar = Progress("rows", stream=tty)  # type: ignore[arg-type]
    assert bar.line(50, 100, bar.start + 5.0).endswith("50/100 rows, 10/s, ETA 5 s")
    assert bar.line(7, None, bar.start + 2.0) == "7 rows, 4/s, 2 s"
    bar.update(10, 100)
    assert tty.text.startswith("\r\x1b[K[") and "10/100 rows" in tty.text
    bar.update(100, 100)
    assert tty.text.endswith("\r\x1b[K")  # nothing left on the terminal
    quiet = _Tty()
    small = Progress("rows", stream=quiet, min_total=4096)  # type: ignore[arg-type]
    small.update(10, 100)
    assert quiet.text == ""
    import io

    piped = Progress("rows", stream=io.StringIO())
    piped.update(1, 10)
    assert not piped.drawn


def test_explain_colours_the_map_type_on_a_terminal_only(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["explain", "GPU0", "GPU1", "--example", "acs-redirect"]
    out = _pty_run(argv, _env(TERM="xterm"), cols=100)
    assert "map type: \x1b[33mTHRU_HOST_BRIDGE\x1b[0m" in out
    code, plain, _ = run(capsys, *argv)
    assert code == 0 and "map type: THRU_HOST_BRIDGE   distance: 4" in plain and "\x1b[" not in plain
