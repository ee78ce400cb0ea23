"""A small machine for the run-time model: a switch with a GPU (BARs of every kind), a NIC, an
NVMe drive, and a GPU on another root port of another host bridge."""

from __future__ import annotations

from typing import Any

import pytest

from p2pdma.model.system import System
from p2pdma.pci.topology import Topology
from p2pdma.sources.spec import parse_spec
from tests.helpers import dev, hb, machine

GPU, NIC, NVME, FAR = "0000:03:00.0", "0000:04:00.0", "0000:05:00.0", "0000:81:00.0"
BUS_OFFSET = 0x40_0000_0000


def model_spec(host_id: str = "8086:2020", **kw: Any) -> dict[str, Any]:
    gpu_bars = [{"size": "16M", "bits": 32}, {"size": "1G", "bits": 64, "prefetch": True},
                {"size": 256, "io": True}]
    return machine([
        hb("pci0000:00", [
            {"bdf": "0000:00:00.0", "id": host_id, "class": 0x060000},
            dev("0000:00:01.0", "8086:352a", port="root-port", children=[
                dev("0000:01:00.0", "1000:c030", port="switch-upstream", children=[
                    dev("0000:02:01.0", "1000:c030", port="switch-downstream", port_number=1,
                        children=[dev(GPU, bars=gpu_bars)]),
                    dev("0000:02:02.0", "1000:c030", port="switch-downstream", port_number=2,
                        children=[dev(NIC, "15b3:1021", bars=[{"size": "32M", "bits": 64}])]),
                    dev("0000:02:03.0", "1000:c030", port="switch-downstream", port_number=3,
                        children=[dev(NVME, "144d:a80a", bars=[{"size": "2M", "bits": 64}])]),
                ]),
            ]),
        ], bus_offset=BUS_OFFSET),
        hb("pci0000:80", [
            {"bdf": "0000:80:00.0", "id": host_id, "class": 0x060000},
            dev("0000:80:01.0", "8086:352a", port="root-port", children=[
                dev(FAR, bars=[{"size": "64M", "bits": 64, "prefetch": True}])]),
        ]),
    ], **kw)


@pytest.fixture(scope="session")
def topo() -> Topology:
    return parse_spec(model_spec()).topology()


@pytest.fixture
def system(topo: Topology) -> System:
    s = System(topo, seed=1)
    for bdf in (GPU, NIC, NVME, FAR):
        s.bind(bdf, "drv")
        s.set_dma_mask(bdf, 64)
    return s
