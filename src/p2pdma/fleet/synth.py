"""Generated fleets for tests and benchmarks: capture archives of synthetic machines, a few distinct
ones copied under many names, with every k-th machine an outlier (one ACS setting changed)."""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path
from typing import Any

from p2pdma.fleet.analyse import scratch_dir
from p2pdma.p2p.matrix import compute_matrix
from p2pdma.sources.capture import capture
from p2pdma.sources.spec import parse_spec
from p2pdma.sources.synth import generate
from p2pdma.sources.sysfs import write_root

REDIRECT_ACS = {"cap": 0x7F, "ctrl": 0x1D}  # SV RR CR UF: peer requests go up to the root complex


def _ports(devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for d in devices:
        if d.get("port") in ("switch-downstream", "root-port"):
            out.append(d)
        out.extend(_ports(d.get("children", [])))
    return out


def _counts(spec: dict[str, Any]) -> dict[str, int]:
    return compute_matrix(parse_spec(spec).topology()).counts()


def outlier_variant(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The same machine with the ACS redirect bits of one port flipped, chosen so that the verdict
    counts change (None when no single port changes them)."""
    base = _counts(spec)
    ports = [p for hb in spec["host_bridges"] for p in _ports(hb["devices"])]
    ports.sort(key=lambda p: p.get("port") != "switch-downstream")
    for k in range(len(ports)):
        variant = copy.deepcopy(spec)
        port = [p for hb in variant["host_bridges"] for p in _ports(hb["devices"])]
        port.sort(key=lambda p: p.get("port") != "switch-downstream")
        target = port[k]
        if target.get("acs", {}).get("ctrl", 0) & 0x0C:
            target.pop("acs")
        else:
            target["acs"] = dict(REDIRECT_ACS)
        if _counts(variant) != base:
            return variant
    return None


def capture_spec(spec: dict[str, Any], out: Path, kernel_release: str = "6.18.0-synth") -> None:
    """Write a spec machine as a sysfs tree in a private temp dir and capture it into ``out``."""
    machine = parse_spec(spec)
    tmp = Path(tempfile.mkdtemp(prefix="p2pdma-fleet-gen-", dir=scratch_dir()))
    try:
        write_root(tmp, machine.raws, cpu=machine.cpu, kernel_release=kernel_release)
        capture(str(out), str(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_fleet(
    dest: Path,
    count: int,
    *,
    endpoints: int = 64,
    distinct: int = 8,
    seed: int = 0,
    outlier_every: int = 0,
    prefix: str = "node",
) -> list[Path]:
    """``count`` captures named ``{prefix}00000.tar.gz`` ... in ``dest``: machine i is distinct
    machine ``i % distinct``; with ``outlier_every`` k > 0 every k-th one is its outlier variant."""
    dest.mkdir(parents=True, exist_ok=True)
    cache = dest / ".p2pdma-fleet-gen"
    cache.mkdir(exist_ok=True)
    originals: list[Path] = []
    variants: list[Path | None] = []
    try:
        for k in range(min(distinct, count)):
            spec = generate(endpoints, seed=seed + k, name=f"{prefix}-model{k}")
            orig = cache / f"model{k}.tar.gz"
            capture_spec(spec, orig)
            originals.append(orig)
            var = outlier_variant(spec) if outlier_every else None
            if var is not None:
                vpath = cache / f"model{k}-outlier.tar.gz"
                capture_spec(var, vpath)
                variants.append(vpath)
            else:
                variants.append(None)
        out: list[Path] = []
        for i in range(count):
            k = i % len(originals)
            src = originals[k]
            if outlier_every and i % outlier_every == outlier_every - 1 and variants[k] is not None:
                src = variants[k]  # type: ignore[assignment]
            path = dest / f"{prefix}{i:05d}.tar.gz"
            shutil.copyfile(src, path)
            out.append(path)
        return out
    finally:
        shutil.rmtree(cache, ignore_errors=True)
