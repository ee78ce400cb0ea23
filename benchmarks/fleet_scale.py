"""Fleet machines per second, in one run, as ratios against the old path measured in the same run.

Usage: python benchmarks/fleet_scale.py [--machines 10000] [--quick] [--workers 2] [--no-dask]

Two fleets: ``--machines`` synthetic 64-endpoint captures (fleet.synth: 8 distinct machines copied
under many names, every 50th an outlier), and copies of the 137-function hwloc-gathered tree
``32em64t-2n8c+dax+nvme+mic+dimms.tar.bz2`` of ../shared/data/hwloc (skipped when absent). For each:
the baseline (the worker as it was before issue 14: extract the archive into a temporary directory
with tarfile, read_root() the directory, classify the causes with one calc_map_type_and_dist() per
class of pairs; one process, a copy of that code lives below), then the serial, pool and Dask engines
as the CLI runs them (wall time including pool / cluster start), and machines per CPU-second (this
process and its reaped workers: what the shared cores' contention does not blur). The serial, pool
and Dask documents must be identical. ``--quick``: 400 and 100 machines, the baseline and serial on a part.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import shutil
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from p2pdma.fleet import analyse
from p2pdma.fleet.analyse import MachineResult, hb_refusal_codes, topology_fingerprint
from p2pdma.fleet.engines import Task, run
from p2pdma.fleet.report import build_report, report_json
from p2pdma.fleet.synth import write_fleet
from p2pdma.p2p.acs import AcsState
from p2pdma.p2p.decide import MapType, calc_map_type_and_dist
from p2pdma.p2p.matrix import Matrix, compute_matrix
from p2pdma.pci.topology import Device, Topology
from p2pdma.sources.sysfs import read_root

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "hwloc"
TREE137 = SHARED / "32em64t-2n8c+dax+nvme+mic+dimms.tar.bz2"
PROFILE = "7.2"
GOAL_POOL_64 = 200.0  # machines/s, two cores (issue 14)


# --- the baseline: the pre-issue-14 worker (extract to a temporary directory, then read_root) ---

def old_extract(data: bytes, dest: str) -> str:
    """Validate the members as the old loader did (names, types, sizes, links inside the root) and
    write them under ``dest`` with tarfile; the tree's root (dest or its single top folder)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
        members = []
        seen: dict[str, str] = {}
        for m in tf:
            parts = [p for p in m.name.split("/") if p not in ("", ".")]
            if m.name.startswith("/") or ".." in parts:
                raise ValueError(f"member {m.name!r} leaves the root")
            if not (m.isreg() or m.isdir() or m.issym()):
                raise ValueError(f"member {m.name!r}: type {m.type!r} not allowed")
            if m.issym() and m.linkname.startswith("/"):
                raise ValueError(f"link {m.name!r} is absolute")
            name = "/".join(parts)
            if name:
                seen[name] = "d" if m.isdir() else "x"
                members.append((name, m))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        for name, m in members:
            path = os.path.join(dest, *name.split("/"))
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            if m.isdir():
                os.makedirs(path, mode=0o755, exist_ok=True)
            elif m.issym():
                os.symlink(m.linkname, path)
            else:
                src = tf.extractfile(m)
                assert src is not None
                fd = os.open(path, flags, 0o644)
                with os.fdopen(fd, "wb") as f:
                    f.write(src.read())
    if os.path.isdir(os.path.join(dest, "sys")):
        return dest
    tops = [e for e in os.listdir(dest) if e != "p2pdma-capture.json"]
    if len(tops) == 1 and os.path.isdir(os.path.join(dest, tops[0], "sys")):
        return os.path.join(dest, tops[0])
    raise ValueError("no sys/ tree in the archive")


def old_load(source: str, name: str) -> Topology:
    """The old load_capture(): extract under scratch_dir() (/dev/shm when writable), read_root()."""
    with open(source, "rb") as f:
        data = f.read()
    dest = tempfile.mkdtemp(prefix="p2pdma-bench-old-", dir=analyse.scratch_dir())
    try:
        return read_root(old_extract(data, dest), name=name)
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def _old_signature(dev: Device) -> tuple[object, ...]:
    acs = None if dev.acs is None else (dev.acs.cap, dev.acs.ctrl, dev.acs.egress_vector)
    return (dev.parent, dev.host_bridge if dev.parent is None else None, acs, dev.acs_known, dev.port_type,
            dev.port_type_inferred, dev.port_number, dev.is_bridge)


def old_cause_counts(topo: Topology, mat: Matrix) -> dict[str, int]:
    """The old cause_counts(): one calc_map_type_and_dist() per class of equivalent ACS pairs."""
    n = len(mat.bdfs)
    out: Counter[str] = Counter()
    devs = [topo[b] for b in mat.bdfs]
    depth = np.array([len(topo.chain(d.bdf)) for d in devs], dtype=np.int64)
    mt = mat.map_type
    no_common = mat.distance == depth[:, None] + depth[None, :]
    not_bus = mt != MapType.BUS_ADDR.value
    hb_of = np.array([topo.hb_index[d.host_bridge] for d in devs], dtype=np.int64)
    same_hb = hb_of[:, None] == hb_of[None, :]
    out["acs-unknown"] = int((~mat.certain).sum())
    nc = no_common & not_bus
    out["no-common:host-bridges"] = int((nc & ~same_hb).sum())
    out["no-common:root-ports"] = int((nc & same_hb).sum())
    nhb = len(topo.host_bridges)
    ns = mt == MapType.NOT_SUPPORTED.value
    if ns.any():
        keys = (hb_of[:, None] * nhb + hb_of[None, :])[ns]
        for key, count in zip(*np.unique(keys, return_counts=True), strict=True):
            a, b = divmod(int(key), nhb)
            for code in hb_refusal_codes(topo, topo.host_bridges[a].name, topo.host_bridges[b].name):
                out[code] += int(count)
    acs_mask = ~no_common & not_bus
    if acs_mask.any():
        sig_ids: dict[tuple[object, ...], int] = {}
        sig = np.array([sig_ids.setdefault(_old_signature(d), len(sig_ids)) for d in devs], dtype=np.int64)
        s = len(sig_ids)
        keys2 = (sig[:, None] * s + sig[None, :]) * 2 + np.eye(n, dtype=np.int64)
        flat = np.flatnonzero(acs_mask)
        _, first, counts = np.unique(keys2.ravel()[flat], return_index=True, return_counts=True)
        for idx, count in zip(first, counts, strict=True):
            i, j = divmod(int(flat[idx]), n)
            v = calc_map_type_and_dist(topo, devs[i], devs[j], mat.profile)
            states = {p.bdf: p.state for p in v.ports}
            for code in {("acs-redirect" if states.get(b) == AcsState.REDIRECT else "acs-blocked") + ":"
                         + analyse._port_kind(topo[b]) for b in v.acs_ports}:
                out[code] += int(count)
    return {k: v for k, v in out.items() if v}


def old_worker(name: str, source: str, profile: str) -> MachineResult:
    topo = old_load(source, name)
    mat = compute_matrix(topo, profile)
    counts = mat.counts()
    return MachineResult(
        name=name, source=source, status="ok", functions=len(topo.devices), endpoints=len(mat.bdfs),
        pairs=(counts["BUS_ADDR"], counts["THRU_HOST_BRIDGE"], counts["NOT_SUPPORTED"]),
        uncertain=int((~mat.certain).sum()), fingerprint=topology_fingerprint(topo),
        causes=tuple(sorted(old_cause_counts(topo, mat).items())), warnings=len(topo.warnings),
        kernel_release=topo.kernel_release,
    )


# --- the run ---

CPU: dict[str, float] = {}  # path -> CPU seconds of the last timing (this process and its children)


def _cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(fn: Callable[[], object], key: str = "") -> tuple[float, object]:
    """Wall seconds and result; CPU[key] gets the CPU seconds spent (workers included once reaped)."""
    c0 = _cpu()
    t0 = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    CPU[key] = _cpu() - c0
    return wall, out


def bench_fleet(label: str, tasks: list[Task], part: int, workers: int, dask: bool) -> dict[str, float]:
    """machines/s of the baseline and of each engine; checks the rows agree."""
    head = tasks[:part]
    t_old, old_rows = _timed(lambda: [old_worker(t.name, t.source, PROFILE) for t in head], "baseline")
    rates = {"baseline": len(head) / t_old}
    per_cpu = {"baseline": len(head) / CPU["baseline"]}
    t_ser, ser_rows = _timed(lambda: run(head, PROFILE, "serial"), "serial")
    rates["serial"] = len(head) / t_ser
    per_cpu["serial"] = len(head) / CPU["serial"]
    assert isinstance(old_rows, list) and isinstance(ser_rows, list)
    for o, s in zip(old_rows, ser_rows, strict=True):  # the new worker finds what the old one found
        assert (o.pairs, o.uncertain, o.causes, o.fingerprint) == (s.pairs, s.uncertain, s.causes, s.fingerprint)
    docs = {"serial": report_json(build_report(ser_rows, PROFILE))}
    whole: dict[str, object] = {}
    for engine in ("pool", "dask") if dask else ("pool",):
        t, rows = _timed(lambda e=engine: run(tasks, PROFILE, e, workers=workers), engine)  # type: ignore[misc]
        assert isinstance(rows, list)
        rates[engine] = len(tasks) / t
        per_cpu[engine] = len(tasks) / CPU[engine]
        docs[engine] = report_json(build_report(rows[:part], PROFILE))
        assert docs[engine] == docs["serial"], f"{engine} and serial documents differ"
        whole[engine] = report_json(build_report(rows, PROFILE))
    if len(whole) == 2:  # the whole fleet's documents, not only the part the serial engine ran
        assert whole["pool"] == whole["dask"], "pool and Dask documents of the whole fleet differ"
    base = rates["baseline"]
    print(f"\n{label}: {len(tasks)} machines ({part} for baseline and serial), {workers} workers")
    print(f"  {'path':<9} {'machines/s':>11} {'x baseline':>11} {'per CPU-s':>10} {'x baseline':>11}"
          f"   (load average now {os.getloadavg()[0]:.2f})")
    for k, v in rates.items():
        print(f"  {k:<9} {v:>11.1f} {v / base:>10.1f}x {per_cpu[k]:>10.1f} {per_cpu[k] / per_cpu['baseline']:>10.1f}x")
    return rates


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--machines", type=int, default=10_000)
    ap.add_argument("--machines-137", type=int, default=1_000)
    ap.add_argument("--part", type=int, default=200, help="machines for the baseline and the serial engine")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="400 and 100 machines, 40 for baseline and serial")
    ap.add_argument("--no-dask", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.machines, args.machines_137, args.part = 400, 100, 40
    dask = not args.no_dask
    if dask:
        try:
            import distributed  # noqa: F401
        except ImportError:
            print("dask not installed (pip install 'p2pdma[dask]'): Dask left out", file=sys.stderr)
            dask = False
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    work = Path(tempfile.mkdtemp(prefix="p2pdma-fleet-scale-"))
    try:
        t0 = time.perf_counter()
        paths = write_fleet(work / "f64", args.machines, endpoints=64, distinct=8, outlier_every=50)
        print(f"generated {len(paths)} 64-endpoint captures in {time.perf_counter() - t0:.1f} s")
        tasks = [Task(p.name.split(".")[0], str(p)) for p in paths]
        r64 = bench_fleet("64-endpoint captures", tasks, min(args.part, len(tasks)), args.workers, dask)
        verdict = "met" if r64["pool"] >= GOAL_POOL_64 else "NOT met"
        print(f"  goal >= {GOAL_POOL_64:.0f} machines/s on the pool: {verdict} ({r64['pool']:.1f})")
        if args.machines_137 <= 0:
            print("\n137-function capture: --machines-137 0, skipped")
        elif TREE137.is_file():
            d = work / "f137"
            d.mkdir()
            t137 = []
            for i in range(args.machines_137):
                p = d / f"m{i:05d}.tar.bz2"
                shutil.copyfile(TREE137, p)
                t137.append(Task(f"m{i:05d}", str(p)))
            bench_fleet("137-function capture (hwloc-gathered tree)", t137, min(args.part, len(t137)),
                        args.workers, dask)
        else:
            print(f"\n137-function capture: {TREE137} absent, skipped")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
