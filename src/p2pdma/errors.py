"""One error type carrying a kernel errno, so every failure maps to the kernel's answer."""

from __future__ import annotations

import errno as _errno


class P2pdmaError(Exception):
    """Base error: ``errno`` is the kernel's errno for the failure, ``message`` says why."""

    default_errno = _errno.EINVAL

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = self.default_errno if errno is None else errno
        self.message = message

    def __str__(self) -> str:
        return self.message


class InputError(P2pdmaError):
    """Bad user input (unknown device, unreadable root, malformed file): the CLI exits 2."""

    default_errno = _errno.EINVAL


class SourceError(InputError):
    """A topology source (sysfs root, spec, capture) could not be read at all."""

    default_errno = _errno.ENOENT


class KernelError(P2pdmaError):
    """A kernel call failed: ``errno`` is what the kernel function returns (negated there)."""


class LifetimeViolation(P2pdmaError):
    """Use of an object after its lifetime ended (a released provider, a freed page, a revoked
    buffer): the kernel would touch memory it may no longer touch. Also recorded on the System."""

    default_errno = _errno.EFAULT


class DmaApiMisuse(P2pdmaError):
    """A DMA API contract broken (unmapping what was not mapped, wrong size, double unmap), as
    CONFIG_DMA_API_DEBUG reports it."""

    default_errno = _errno.EINVAL


class IommuFault(P2pdmaError):
    """A device access to an I/O virtual address with no translation."""

    default_errno = _errno.EFAULT
