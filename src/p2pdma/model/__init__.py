"""A machine at run time: drivers, the provider layer, the optional page layer, the DMA API.

Import order follows the kernel's layering: ``provider`` knows nothing of ``pages``; ``dma`` maps
physical addresses and needs no pages either.
"""

from p2pdma.model.system import System, Violation

__all__ = ["System", "Violation"]
