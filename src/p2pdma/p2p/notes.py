"""Pair-level facts the input states beyond the PCI tree, as notes for a verdict (no kernel rule
changes): GPUs joined by NVLink or an NVSwitch move their data there, not over PCIe P2P."""

from __future__ import annotations

from p2pdma.pci.topology import Device, Topology

NVLINK_NOTE = "NVLink between these GPUs: PCIe P2P is not their data path"


def _bdf(dev: Device | str) -> str:
    return dev if isinstance(dev, str) else dev.bdf


def nvlink(topo: Topology, provider: Device | str, client: Device | str) -> bool:
    """Whether the input (hwloc NVLinkBandwidth matrix, NCCL ``<nvlink>``) joins the two GPUs by NVLink."""
    return (_bdf(provider), _bdf(client)) in topo.nvlinks


def pair_notes(topo: Topology, provider: Device | str, client: Device | str) -> list[str]:
    """Notes for the (provider, client) verdict from facts outside the PCI tree; empty when none."""
    return [NVLINK_NOTE] if nvlink(topo, provider, client) else []


__all__ = ["NVLINK_NOTE", "nvlink", "pair_notes"]
