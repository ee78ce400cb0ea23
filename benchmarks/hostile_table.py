"""Issue 16's hostile and huge inputs, the worst case of each class, run through the real CLI: one
subprocess per case (120 s timeout, killed past 2 GiB of RSS), measured by GNU time (%e %M), in
a fresh working directory and TMPDIR per case. Prints a Markdown table: exit code, stderr's first
line and line count, wall seconds, max RSS and anything written that the user did not name.

Usage: python benchmarks/hostile_table.py [--only SUBSTRING] [--skip-big] [--keep DIR]

Inputs are generated in a private temp dir (removed at the end unless --keep): sysfs roots with the
sysfs writer, synthetic machines with p2pdma.sources.synth, archives with tarfile.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from p2pdma.sources.capture import capture
from p2pdma.sources.spec import parse_spec
from p2pdma.sources.synth import generate
from p2pdma.sources.sysfs import write_root

EXE = str(Path(sys.executable).with_name("p2pdma"))
TIME = "/usr/bin/time"  # GNU time: -f '%e %M' gives the wall seconds and max RSS (KiB) of the CLI alone
TIMEOUT_S = 120
RSS_CAP = 2 << 30  # killed past this (the bound is 1 GiB: anything over it fails anyway)
GIB = 1 << 30

GOOD = """name: good
cpu: {vendor: GenuineIntel, family: 6, model: 143, model_name: "Intel(R) Xeon(R) Platinum 8480+"}
host_bridges:
  - name: pci0000:00
    devices:
      - {bdf: '0000:00:01.0', id: '8086:347a', port: root-port, link: [16.0, 16], children: [
          {bdf: '0000:01:00.0', id: '10de:2330', class: 0x030200, port: endpoint, link: [16.0, 16],
           bars: [{size: 16M, bits: 64, prefetch: true}]}]}
      - {bdf: '0000:00:02.0', id: '8086:347a', port: root-port, link: [16.0, 16], children: [
          {bdf: '0000:02:00.0', id: '15b3:101d', class: 0x020000, port: endpoint, link: [16.0, 16],
           bars: [{size: 32M, bits: 64, prefetch: true}]}]}
"""
DEV = "sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0"

BIG_FILL = """name: big
machine: gpu8-switches
devices:
  gpu: {bdf: "0000:03:00.0", bind: vfio}
  nic: {bdf: "0000:05:00.0", bind: mlx5_core}
steps:
  - fill: {device: gpu, bar: 1, offset: 4K, size: 1020M, pattern: 1}
  - export: {name: buf, device: gpu, bar: 1, ranges: [[0, 1G]]}
  - import: {name: rdma, kind: rdma, device: nic, buffer: buf}
  - dma: {importer: rdma, read: 12K, size: 1000M}
  - dma: {importer: rdma, write: 8K, size: 1000M, pattern: 2}
  - dma: {importer: rdma, read: 0, size: 1G}
  - verify: buf
"""
SCENARIO_HEAD = """name: ranges
machine: gpu8-switches
devices:
  gpu: {bdf: "0000:03:00.0", bind: vfio}
steps:
"""


def laughs(levels: int, fan: int) -> str:
    """A YAML alias bomb: ``fan ** levels`` strings from a few hundred bytes."""
    lines = ["l0: &l0 [" + ", ".join(['"lol"'] * fan) + "]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * fan) + "]")
    return "\n".join(lines) + "\n"


def bad_spec(mutate: Callable[[dict[str, object]], None]) -> str:
    """GOOD with the GPU's entry changed by ``mutate``, as YAML."""
    s = yaml.safe_load(GOOD)
    mutate(s["host_bridges"][0]["devices"][0]["children"][0])
    return yaml.safe_dump(s)


def set_field(key: str, value: object) -> Callable[[dict[str, object]], None]:
    def mutate(d: dict[str, object]) -> None:
        d[key] = value
    return mutate


def bridge_chain(depth: int) -> str:
    """A spec whose one device sits below ``depth`` switch ports (JSON text, built without recursion)."""
    opens = "".join('{"bdf": "0000:%02x:00.0", "port": "switch-downstream", "children": [' % (k % 250)
                    for k in reversed(range(depth)))
    return ('{"host_bridges": [{"name": "pci0000:00", "devices": [' + opens + '{"bdf": "0000:ff:00.0"}'
            + "]}" * depth + "]}]}")


class Inputs:
    """Generated inputs under one private directory, each built once, when a case first needs it."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._made: dict[str, Path] = {}
        self.notes: dict[str, str] = {}

    def once(self, key: str, make: Callable[[Path], None]) -> str:
        if key not in self._made:
            p = self.base / key
            t0 = time.monotonic()
            make(p)
            self.notes[key] = f"built in {time.monotonic() - t0:.1f} s"
            self._made[key] = p
        return str(self._made[key])

    def text(self, name: str, text: str | bytes) -> str:
        def make(p: Path) -> None:
            if isinstance(text, bytes):
                p.write_bytes(text)
            else:
                p.write_text(text)
        return self.once(name, make)

    def fifo(self, name: str) -> str:
        return self.once(name, lambda p: os.mkfifo(p))

    def link(self, name: str, target: str) -> str:
        return self.once(name, lambda p: p.symlink_to(target))

    def root(self, name: str, spec: str | dict[str, object] = GOOD,
             after: Callable[[Path], None] | None = None) -> str:
        """A sysfs/procfs root written from a spec; ``after`` changes it (a FIFO swapped in)."""
        def make(p: Path) -> None:
            m = parse_spec(yaml.safe_load(spec) if isinstance(spec, str) else spec, where=name)
            write_root(p, m.raws, cpu=m.cpu, kernel_release="7.2.13+deb14-amd64")
            if after is not None:
                after(p)
        return self.once(name, make)

    def fifo_root(self, rel: str) -> str:
        def swap(p: Path) -> None:
            f = p / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            if f.exists():
                f.unlink()
            os.mkfifo(f)
        return self.root("root-fifo-" + rel.replace("/", "_"), after=swap)

    def archive(self, name: str, members: Callable[[tarfile.TarFile], None]) -> str:
        def make(p: Path) -> None:
            with tarfile.open(p, "w:gz", format=tarfile.GNU_FORMAT) as tf:
                members(tf)
        return self.once(name, make)

    def capture_of(self, name: str, root: str) -> str:
        def make(p: Path) -> None:
            capture(str(p), root)
        return self.once(name, make)


def add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mtime = 0
    tf.addfile(ti, io.BytesIO(data))


def rewrite_capture(src: str, replace: dict[str, bytes]) -> Callable[[tarfile.TarFile], None]:
    """Members of the capture ``src`` with some replaced."""
    def members(tf: tarfile.TarFile) -> None:
        with tarfile.open(src) as old:
            for m in old.getmembers():
                if m.name in replace:
                    add_bytes(tf, m.name, replace[m.name])
                else:
                    tf.addfile(m, old.extractfile(m) if m.isfile() else None)
    return members


@dataclass
class Case:
    cls: str
    name: str
    argv: Callable[[Inputs], list[str]]
    expect: str = "refuse"  # refuse: exit 1 or 2, one line; ok: exit 0; note: any exit, for the figures
    named: tuple[str, ...] = ()  # files in the working directory the user names (written or kept)
    pre: dict[str, str] = field(default_factory=dict)  # files the user already had there
    stdout: str | None = None  # a path stdout is sent to (default: a file outside the working dir)
    big: bool = False  # skipped with --skip-big
    stdout_has: str = ""  # also show stdout's first line holding this (where the answer is on stdout)
    stderr_has: str = ""  # also show stderr's first line holding this (a warning after notes)


@dataclass
class Result:
    code: int | None
    wall: float
    rss_mib: float
    first: str
    lines: int
    extra: list[str]
    changed: list[str]
    killed: str
    out_line: str = ""


def snapshot(d: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(d):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = p.lstat()
            out[str(p.relative_to(d))] = (st.st_size, st.st_mtime_ns)
    return out


def vm_rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_case(case: Case, inputs: Inputs, work: Path) -> tuple[list[str], Result]:
    argv = case.argv(inputs)
    cwd, tmp = work / "cwd", work / "tmp"
    cwd.mkdir(parents=True)
    tmp.mkdir()
    for name, text in case.pre.items():
        (cwd / name).write_text(text)
    before = snapshot(cwd)
    env = dict(os.environ, TMPDIR=str(tmp), COLUMNS="120", NO_COLOR="1")
    err_path = work / "stderr"
    out_path = case.stdout or str(work / "stdout")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.monotonic()
        proc = _spawn(argv, cwd, env, out.fileno(), err.fileno(), work / "rusage")
        killed = ""
        peak = 0
        while True:
            pid, status, _ = os.wait4(proc, os.WNOHANG)
            if pid:
                break
            el = time.monotonic() - t0
            if not killed and el > TIMEOUT_S:
                killed = f"killed: still running after {TIMEOUT_S} s"
            elif not killed and (peak := max(peak, tree_rss(proc))) > RSS_CAP:
                killed = f"killed: RSS past {RSS_CAP >> 30} GiB after {el:.0f} s"
            if killed:
                os.killpg(proc, signal.SIGKILL)
            time.sleep(0.05)
        wall = time.monotonic() - t0
    code = os.waitstatus_to_exitcode(status)
    try:  # GNU time's figure; the highest polled only when the CLI was killed before time could report
        rss_mib = int((work / "rusage").read_text().split()[-1]) / 1024  # (a poll may see the pre-exec fork)
    except (OSError, ValueError, IndexError):
        rss_mib = peak / 2**20
    text = err_path.read_text(errors="replace")
    lines = text.splitlines()
    after = snapshot(cwd)
    extra = sorted(n for n in after if n not in before and n not in case.named)
    extra += sorted("TMPDIR/" + n for n in snapshot(tmp))
    changed = sorted(n for n in before if after.get(n) != before[n])
    out_line = ""
    if case.stderr_has:
        out_line = next((ln.strip() for ln in lines[1:] if case.stderr_has in ln), "")
    if not out_line and code in (1, 2) and len(lines) > 1:  # the refusal after notes: the last line
        out_line = lines[-1].strip()
    if case.stdout_has and case.stdout is None:
        with open(out_path, errors="replace") as f:
            out_line = next((ln.strip() for ln in f if case.stdout_has in ln), "")
    return argv, Result(code if not killed else None, wall, rss_mib, lines[0] if lines else "",
                        len(lines), extra, changed, killed, out_line)


def _spawn(argv: list[str], cwd: Path, env: dict[str, str], out: int, err: int, rusage: Path) -> int:
    """Start the CLI under /usr/bin/time (its max RSS is the CLI's own: a child forked from this
    process would carry this process's high-water RSS into its rusage through exec)."""
    pid = os.fork()
    if pid == 0:  # the child: its own process group (killed whole), stdin empty
        try:
            os.setsid()
            os.chdir(cwd)
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out, 1)
            os.dup2(err, 2)
            os.execve(TIME, [TIME, "-q", "-f", "%e %M", "-o", str(rusage), EXE, *argv], env)
        finally:
            os._exit(127)
    return pid


def tree_rss(pid: int) -> int:
    """RSS of ``pid`` and its children (the CLI below /usr/bin/time, a fleet's workers)."""
    total = vm_rss(pid)
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return total
    return total + sum(tree_rss(int(k)) for k in kids)


def verdict(case: Case, r: Result) -> str:
    why = []
    if r.killed:
        why.append(r.killed)
    elif case.expect == "refuse":
        if r.code not in (1, 2):
            why.append(f"exit {r.code}")
        if r.lines != 1:
            why.append(f"{r.lines} stderr lines")
    elif case.expect == "ok" and r.code != 0:
        why.append(f"exit {r.code}")
    if "Traceback" in r.first or r.first.startswith("Traceback"):
        why.append("traceback")
    if r.rss_mib > 1024:
        why.append("over 1 GiB")
    if r.extra or r.changed:
        why.append("wrote unnamed" if r.extra else "changed the user's file")
    return "FAIL: " + ", ".join(why) if why else "ok"


def md(s: str, n: int = 100) -> str:
    s = s if len(s) <= n else s[: n - 3] + "..."
    return s.replace("|", "\\|").replace("`", "'")


def shown_argv(argv: list[str], base: str) -> str:
    out = []
    for a in argv:
        a = a.replace(base + "/", "$T/")
        out.append(a if len(a) <= 40 else a[:20] + f"...({len(a)} chars)")
    return "p2pdma " + " ".join(out)


# --- the cases ------------------------------------------------------------------------------------------
def roots_20k(i: Inputs) -> str:
    return i.root("root-20k", generate(9000, seed=16))


def spec_3000(i: Inputs) -> str:
    def make(p: Path) -> None:
        p.write_text(json.dumps(generate(3000, seed=16)))
    return i.once("s3000.json", make)


def slug(label: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in label)


def fifo_argv(rel: str) -> Callable[[Inputs], list[str]]:
    return lambda i: ["topo", "--root", i.fifo_root(rel)]


def spec_argv(name: str, text: str | bytes) -> Callable[[Inputs], list[str]]:
    return lambda i: ["topo", "--spec", i.text(name, text)]


def model_argv(label: str, text: str) -> Callable[[Inputs], list[str]]:
    return lambda i: ["check", i.text("model-" + slug(label) + ".yaml", MODEL + text)]


def spec_200mb(p: Path) -> None:
    with open(p, "w") as f:
        f.write(GOOD)
        line = "# " + "x" * 1021 + "\n"
        for _ in range(200 * 1024):
            f.write(line)


def sparse(p: Path, size: int) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "wb") as f:
        f.truncate(size)


def long_link_archive(i: Inputs) -> str:
    def members(tf: tarfile.TarFile) -> None:
        cap = i.capture_of("good.tar.gz", i.root("root-good"))
        with tarfile.open(cap) as old:
            for m in old.getmembers():
                tf.addfile(m, old.extractfile(m) if m.isfile() else None)
        ti = tarfile.TarInfo(DEV + "/driver")
        ti.type = tarfile.SYMTYPE
        ti.linkname = "a/" * (1 << 20)  # 2 MB, a million components
        tf.addfile(ti)
    return i.archive("long-link.tar.gz", members)


def deep_manifest_archive(i: Inputs) -> str:
    cap = i.capture_of("good.tar.gz", i.root("root-good"))
    deep = b"[" * 100_000 + b"]" * 100_000
    return i.archive("deep-manifest.tar.gz", rewrite_capture(cap, {"p2pdma-capture.json": deep}))


def fleet_dir_deep(i: Inputs) -> str:
    def make(p: Path) -> None:
        p.mkdir()
        shutil.copy(deep_manifest_archive(i), p / "node0.tar.gz")
        shutil.copy(i.capture_of("good.tar.gz", i.root("root-good")), p / "node1.tar.gz")
    return i.once("fleet-deep", make)


def ranges_scenario(n: int) -> str:
    body = ",".join(f"[{k * 4}K,4K]" for k in range(n))
    return SCENARIO_HEAD + f"  - export: {{name: buf, device: gpu, bar: 1, ranges: [{body}]}}\n"


FIFO_ATTRS = [DEV + "/config", DEV + "/vendor", DEV + "/resource", DEV + "/numa_node", DEV + "/max_link_speed",
              "proc/cpuinfo", "proc/sys/kernel/osrelease", "sys/class/dmi/id/product_name",
              "sys/kernel/iommu_groups/0/type"]
HWLOC_UNKNOWN = b'<?xml version="1.0" encoding="x-no-such-encoding"?>\n<topology version="2.0"></topology>\n'
NCCL_UNKNOWN = b'<?xml version="1.0" encoding="x-no-such-encoding"?>\n<system version="1"></system>\n'
MODEL = "machine: gpu8-switches\n"
VF_BOMB = yaml.safe_dump({"host_bridges": [{"name": "pci0000:00", "devices": [
    {"bdf": f"0000:00:{k:02x}.0", "id": "15b3:101d", "vfs": {"count": 65000, "id": "15b3:101e"}}
    for k in range(20)] + [{"bdf": f"0000:00:{k:02x}.1", "vfs": {"count": 65000}} for k in range(20)]}]})


def cases() -> list[Case]:
    c: list[Case] = []
    H = "hang: FIFO"
    for rel in FIFO_ATTRS:
        c.append(Case(H, f"root with `{rel.rsplit('/', 1)[-1]}` a FIFO (read as absent, warned)",
                      fifo_argv(rel), expect="note", stderr_has="regular"))
    c.append(Case(H, "capture of a root whose `config` is a FIFO",
                  lambda i: ["capture", "--root", i.fifo_root(FIFO_ATTRS[0]), "out.tar.gz"], expect="note",
                  named=("out.tar.gz",), stderr_has="could not read"))
    c.append(Case(H, "--spec a FIFO", lambda i: ["topo", "--spec", i.fifo("fifo-spec.yaml")]))
    c.append(Case(H, "scenario a FIFO", lambda i: ["simulate", i.fifo("fifo-scenario.yaml")]))
    c.append(Case(H, "check model a FIFO", lambda i: ["check", i.fifo("fifo-model.yaml")]))
    c.append(Case(H, "fleet glob over /proc", lambda i: ["fleet", "--engine", "serial", "/proc/*"], expect="note"))

    B = "hang: huge machine"
    c.append(Case(B, "--root with ~19,500 functions: topo", lambda i: ["topo", "--root", roots_20k(i)],
                  expect="note", big=True))
    c.append(Case(B, "--root ~19,500 functions: matrix", lambda i: ["matrix", "--root", roots_20k(i)], big=True))
    c.append(Case(B, "--root ~19,500 functions: report", lambda i: ["report", "--root", roots_20k(i), "r.html"],
                  named=("r.html",), big=True))
    c.append(Case(B, "--root ~19,500 functions: fix --all-pairs (thousands of IOMMU groups)",
                  lambda i: ["fix", "--all-pairs", "--root", roots_20k(i)], big=True))
    c.append(Case(B, "capture of ~19,500 functions (capture's bound 16,384)",
                  lambda i: ["capture", "--root", roots_20k(i), "out.tar.gz"], named=("out.tar.gz",), big=True))
    c.append(Case(B, "3,000-endpoint report (6,491 functions)", lambda i: ["report", "--spec", spec_3000(i), "r.html"],
                  named=("r.html",)))
    c.append(Case(B, "2 MB link target in an archive", lambda i: ["topo", "--root", long_link_archive(i)]))
    c.append(Case(B, "check model, 40 DMAs per importer",
                  lambda i: ["check", i.text("dma40.yaml", MODEL + "dma_per_importer: 40\n")]))
    imp1000 = MODEL + "importers: " + json.dumps([{"kind": "rdma", "dev": "0000:05:00.0"}] * 1000) + "\n"
    c.append(Case(B, "check model, 1,000 importers (no aliases)",
                  lambda i: ["check", i.text("imp1000.yaml", imp1000)]))
    c.append(Case(B, "check --importers 1000", lambda i: ["check", "dmabuf-revoke", "--importers", "1000"]))
    c.append(Case(B, "200 MB spec", lambda i: ["topo", "--spec", i.once("200mb.yaml", spec_200mb)]))

    T = "traceback: YAML/JSON"
    bomb = laughs(12, 10)
    c.append(Case(T, "billion laughs (10^12) --spec", lambda i: ["topo", "--spec", i.text("bomb.yaml", bomb)]))
    c.append(Case(T, "billion laughs scenario", lambda i: ["simulate", i.text("bomb-s.yaml", bomb)]))
    c.append(Case(T, "billion laughs check model", lambda i: ["check", i.text("bomb-m.yaml", bomb)]))
    deep_y, deep_j = "[" * 100_000 + "]" * 100_000, "{\"a\":" * 100_000 + "1" + "}" * 100_000
    c.append(Case(T, "100,000-deep YAML --spec", lambda i: ["topo", "--spec", i.text("deep.yaml", deep_y)]))
    c.append(Case(T, "100,000-deep JSON --spec", lambda i: ["topo", "--spec", i.text("deep.json", deep_j)]))
    c.append(Case(T, "100,000-deep YAML scenario", lambda i: ["simulate", i.text("deep-s.yaml", deep_y)]))
    c.append(Case(T, "100,000-deep YAML check model", lambda i: ["check", i.text("deep-m.yaml", deep_y)]))
    c.append(Case(T, "100,000-deep JSON capture manifest: topo", lambda i: ["topo", "--root", deep_manifest_archive(i)],
                  expect="note"))
    c.append(Case(T, "100,000-deep JSON capture manifest: fleet (reason)",
                  lambda i: ["fleet", "--engine", "serial", fleet_dir_deep(i)], expect="note", stdout_has="failed:"))

    Z = "traceback: /dev/zero"
    c.append(Case(Z, "--spec /dev/zero", lambda i: ["topo", "--spec", "/dev/zero"]))
    c.append(Case(Z, "scenario /dev/zero", lambda i: ["simulate", "/dev/zero"]))
    c.append(Case(Z, "scenario zero.yaml -> /dev/zero", lambda i: ["simulate", i.link("zero-s.yaml", "/dev/zero")]))
    c.append(Case(Z, "check model zero.yaml -> /dev/zero", lambda i: ["check", i.link("zero-m.yaml", "/dev/zero")]))

    F = "traceback: spec fields"
    fields: list[tuple[str, Callable[[dict[str, object]], None]]] = [
        ('link: "x"', set_field("link", "x")), ("link: [8]", set_field("link", [8])),
        ("width -1", set_field("link", [16.0, -1])), ("width 10^6", set_field("link", [16.0, 10**6])),
        ("id 10de:23301", set_field("id", "10de:23301")), ("id -1:2330", set_field("id", "-1:2330")),
        ("class 2^24", set_field("class", 1 << 24)), ("acs.cap 0x10000", set_field("acs", {"cap": 0x10000})),
        ("egress 2,000 entries", set_field("acs", {"egress": list(range(2000))})),
        ("port_number 2^40", set_field("port_number", 1 << 40)), ("port_number [1]", set_field("port_number", [1])),
    ]
    for label, mut in fields:
        c.append(Case(F, label, spec_argv("field-" + slug(label) + ".yaml", bad_spec(mut))))
    c.append(Case(F, "non-UTF-8 bytes", lambda i: ["topo", "--spec", i.text("nonutf8.yaml",
                                                                              GOOD.encode() + b"# \xff\xfe\n")]))
    c.append(Case(F, "5,000-deep bridge chain", lambda i: ["topo", "--spec", i.text("chain.json", bridge_chain(5000))]))

    M = "traceback: check model fields"
    for label, text in [("bar: x", "bar: x\n"), ("bar: -1", "bar: -1\n"), ("triggers: reset (not a list)",
                                                                         "triggers: reset\n")]:
        c.append(Case(M, label, model_argv(label, text)))

    X = "traceback: XML, pci.ids"
    c.append(Case(X, "hwloc XML, unknown encoding", lambda i: ["topo", "--hwloc", i.text("enc.xml", HWLOC_UNKNOWN)]))
    c.append(Case(X, "NCCL XML, unknown encoding", lambda i: ["topo", "--nccl-xml", i.text("enc-nccl.xml",
                                                                                            NCCL_UNKNOWN)]))
    c.append(Case(X, "sparse 2 GiB usr/share/misc/pci.ids in a root (ignored)", lambda i: ["topo", "--root", i.root(
        "root-pciids", after=lambda p: sparse(p / "usr/share/misc/pci.ids", 2 << 30))], expect="ok"))

    P = "traceback: paths"
    c.append(Case(P, "--spec with a 300-character component",
                  lambda i: ["topo", "--spec", str(i.base / ("c" * 300 + ".yaml"))]))
    c.append(Case(P, "--spec a 100,000-character path", lambda i: ["topo", "--spec", "d/" * 50_000 + "m.yaml"]))
    c.append(Case(P, "--root a 100,000-character path", lambda i: ["topo", "--root", "d/" * 50_000]))
    c.append(Case(P, "report OUT with a 300-character component",
                  lambda i: ["report", "--example", "gpu8-switches", "n" * 300 + ".html"]))
    c.append(Case(P, "capture OUT a 100,000-character path",
                  lambda i: ["capture", "--root", i.root("root-good"), "p/" * 50_000 + "o.tar.gz"]))
    c.append(Case(P, "3,000-endpoint matrix --json (default --max-functions 1024)",
                  lambda i: ["matrix", "--json", "--spec", spec_3000(i)]))
    c.append(Case(P, "3,000-endpoint matrix --json --max-functions 3000 --schema 1",
                  lambda i: ["matrix", "--json", "--schema", "1", "--max-functions", "3000", "--spec", spec_3000(i)],
                  expect="ok", big=True))
    c.append(Case(P, "3,000-endpoint matrix --json --max-functions 3000 (schema 2, streamed)",
                  lambda i: ["matrix", "--json", "--max-functions", "3000", "--spec", spec_3000(i)],
                  expect="ok", big=True))

    R = "memory"
    c.append(Case(R, "40 x 65,000 VFs spec (3 KB)", lambda i: ["topo", "--spec", i.text("vfs.yaml", VF_BOMB)]))
    c.append(Case(R, "scenario exporting 262,144 ranges", lambda i: ["simulate", i.text(
        "ranges.yaml", ranges_scenario(262_144))], expect="note"))
    c.append(Case(R, "1 GiB fill and DMAs (test_big_transfers)", lambda i: ["simulate", i.text("fill.yaml", BIG_FILL),
                                                                            "--json"], expect="ok", big=True))
    huge = SCENARIO_HEAD + f"  - export: {{name: buf, device: gpu, bar: 1, ranges: [[0, {1 << 70}]]}}\n"
    c.append(Case(R, "scenario export of a 2^70-byte range", lambda i: ["simulate", i.text("hugerange.yaml", huge)],
                  expect="note"))

    W = "wrong answer"
    spec = "good.yaml"
    c.append(Case(W, "report onto an existing file, no --force",
                  lambda i: ["report", "--spec", i.text(spec, GOOD), "r.html"], pre={"r.html": "mine"}))
    c.append(Case(W, "capture onto an existing file, no --force",
                  lambda i: ["capture", "--root", i.root("root-good"), "c.tar.gz"], pre={"c.tar.gz": "mine"}))
    c.append(Case(W, '--root ""', lambda i: ["topo", "--root", ""]))
    c.append(Case(W, "capture - (archive to stdout)", lambda i: ["capture", "--root", i.root("root-good"), "-"],
                  expect="ok"))
    c.append(Case(W, "report to /dev/full", lambda i: ["report", "--spec", i.text(spec, GOOD), "/dev/full"]))
    c.append(Case(W, "capture --force to /dev/full", lambda i: ["capture", "--root", i.root("root-good"), "--force",
                                                                "/dev/full"]))
    c.append(Case(W, "matrix with stdout on /dev/full", lambda i: ["matrix", "--example", "gpu8-switches"],
                  stdout="/dev/full"))
    c.append(Case(W, "topo --json with stdout on /dev/full", lambda i: ["topo", "--json", "--example", "gpu8-switches"],
                  stdout="/dev/full"))
    c.append(Case(W, "report - with stdout on /dev/full", lambda i: ["report", "--example", "gpu8-switches", "-"],
                  stdout="/dev/full"))
    c.append(Case(W, "capture - with stdout on /dev/full", lambda i: ["capture", "--root", i.root("root-good"), "-"],
                  stdout="/dev/full"))
    c.append(Case(W, "spec BAR size 2^200", lambda i: ["topo", "--spec", i.text(
        "bar200.yaml", bad_spec(set_field("bars", [{"size": 1 << 200, "bits": 64}])))]))
    c.append(Case(W, "spec duplicate BDF 0000:00:01.0 / 00000000:00:01.0", lambda i: ["topo", "--spec", i.text(
        "dup.yaml", GOOD + "      - {bdf: '00000000:00:01.0'}\n")]))
    c.append(Case(W, "spec BDF with a trailing newline", lambda i: ["topo", "--spec", i.text(
        "nl.yaml", bad_spec(set_field("bdf", "0000:01:00.0\n")))]))
    for label, text in [("mode: dma", "mode: dma\n"), ("wait_for_fences: yes-text", "wait_for_fences: 'yes'\n"),
                        ("expect: 1", "expect: 1\n")]:
        c.append(Case(W, f"check model {label}", model_argv(label, text)))
    return c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="run only cases whose class or name contains this")
    ap.add_argument("--skip-big", action="store_true", help="skip the cases that take a minute or more")
    ap.add_argument("--keep", help="build inputs here and keep them")
    args = ap.parse_args()
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="p2pdma-hostile-"))
    base.mkdir(parents=True, exist_ok=True)
    inputs = Inputs(base / "in")
    inputs.base.mkdir(exist_ok=True)
    rows = ["| class | case | command | exit | stderr (first line) | lines | wall s | max RSS MB | unnamed writes "
            "| verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    fails = 0
    try:
        for k, case in enumerate(cases()):
            if args.only and args.only not in case.cls + " " + case.name:
                continue
            if args.skip_big and case.big:
                rows.append(f"| {case.cls} | {md(case.name)} | | | skipped (--skip-big) | | | | | |")
                continue
            argv, r = run_case(case, inputs, base / f"case{k:03d}")
            v = verdict(case, r)
            fails += v != "ok"
            code = "killed" if r.code is None else str(r.code)
            writes = ", ".join(r.extra + [f"changed {n}" for n in r.changed]) or "none"
            first = r.first.replace(str(base) + "/", "$T/")
            if r.out_line:
                where = " / stdout: " if case.stdout_has else " / stderr: "
                first += where + r.out_line.replace(str(base) + "/", "$T/")[:150]
            row = (f"| {case.cls} | {md(case.name)} | `{md(shown_argv(argv, str(base)), 90)}` | {code} | "
                   f"{md(first, 110 if not r.out_line else 260)} | {r.lines} | {r.wall:.2f} | {r.rss_mib:.0f} | "
                   f"{md(writes, 60)} | {md(v, 60)} |")
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
        rows.append("| vfio uAPI fuzz | 100,000 random/structured/mutated/stateful requests | "
                    "tests/model/test_fuzz.py | | errno-carrying errors only (kept as a test) | | | | | |")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print("\n".join(rows))
    print(f"\n{fails} case(s) not as the issue asks; inputs: "
          + "; ".join(f"{k} {v}" for k, v in inputs.notes.items() if "built in 0." not in v))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
