"""p2pdma: the Linux kernel's PCI peer-to-peer DMA rules, made executable."""

__version__ = "0.1.0"
