"""The PCI topology model: functions, bridges, host bridges, BARs, decoded config space."""

from p2pdma.pci.topology import Bar, Cpu, Device, HostBridge, Topology

__all__ = ["Bar", "Cpu", "Device", "HostBridge", "Topology"]
