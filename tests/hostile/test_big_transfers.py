"""A scenario moving 1 GiB per step (the documented per-step maximum) at offsets that are not
chunk-aligned runs in bounded memory: the fabric keeps fills, patterns and copies as tokens."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BIG = """name: big
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

RUN = """import json, resource, sys
from p2pdma.cli import main
code = main(["simulate", sys.argv[1], "--json"])
print(json.dumps({"code": code, "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}), file=sys.stderr)
"""


def test_gigabyte_steps_run_in_bounded_memory(tmp_path: Path) -> None:
    sc = tmp_path / "big.yaml"
    sc.write_text(BIG)
    done = subprocess.run([sys.executable, "-c", RUN, str(sc)], capture_output=True, text=True, timeout=300)
    status = json.loads(done.stderr.strip().splitlines()[-1])
    doc = json.loads(done.stdout)
    assert status["code"] == 0 and doc["data_intact"] is True and not doc["violations"], done.stdout[-2000:]
    assert doc["bytes_by_path"]["BUS_ADDR"] == 1000 * 2**20 * 2 + 2**30
    assert status["rss_kib"] < 400 * 1024, status  # 1 GiB steps, well under 1 GiB of memory
