"""VFIO_DEVICE_FEATURE (DMA_BUF and the other feature numbers) and the dma-buf revoke protocol against Debian's
running 7.2.13, case by case.

One QEMU TCG boot (q35, ``intel-iommu,intremap=on`` + ``intel_iommu=on``: Debian's 7.2 has neither
CONFIG_VFIO_NOIOMMU nor CONFIG_IOMMUFD, so each device is opened through the group API on a type1 container, and
type1 wants interrupt remapping) of two devices behind their own ``pcie-root-port``: a ``pci-testdev,membar=4M``
(BAR0 4 KiB MMIO, BAR1 I/O ports, BAR2/3 a 4 MiB 64-bit prefetchable BAR, BAR4/5 absent; no capabilities) and
an emulated NVMe controller (a PM capability for D3hot, PCIe FLR). The init loads vfio, vfio_iommu_type1,
vfio-pci-core, vfio-pci and vgem (insmod, dependencies first), binds both through ``driver_override``, captures
the sysfs tree as ``p2pdma capture`` would, and runs tests/kernel/vfio_guest.c (built here with ``gcc -static``
against the 7.2 uAPI headers of Debian's linux-libc-dev 7.2.13-1) over each device's steps.

The steps are request bytes (CASES: every refusal of vfio_ioctl_device_feature(), vfio_check_feature(),
vfio_pci_core_feature_dma_buf(), validate_dmabuf_input(), vfio_pci_core_fill_phys_vec(), the other feature
numbers, valid exports and their file flags) and lifetime steps: an unsignalled vgem fence imported into a kept
dma-buf (DMA_BUF_IOCTL_IMPORT_SYNC_FILE), then decode off / on, VFIO_DEVICE_RESET, D3hot, FLR, an export, unbind
and the device's close run in a child process; whether each is still inside the kernel 1.5 s later, and that
it returns once DRM_IOCTL_VGEM_FENCE_SIGNAL signals the fence, is what the kernel shows of vfio_pci_dma_buf_move()
waiting. The same bytes and steps go, in the same order, to ``p2pdma.model.vfio`` (uapi_feature(),
vfio_set_memory(), vfio_reset(), vfio_set_power(), vfio_flr(), vfio_unbind(), vfio_close(), dmabuf fences) on a
model System of the captured machine; the test asserts equal errnos, equal blocking and completion, and for every
new dma-buf the same size, F_GETFL and FD_CLOEXEC. Kernel functions (Debian's linux-source-7.2 7.2.13-1) are
named per case; MODEL_DIFFERS lists the strict xfails.

Not observable from user space here: the revoked state itself (vfio's dma-buf has no mmap and the sync-file
ioctls read only the reservation object; an importer would need iommufd, which Debian does not build), and the
revoke's wait for unmaps (no importer can map).
"""

from __future__ import annotations

import errno
import hashlib
import shutil
import struct
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from p2pdma.model import dmabuf as B
from p2pdma.model import vfio as V
from p2pdma.model.system import System
from p2pdma.sources import open_machine
from tests.kernel import guest, qemu

GET, SET, PROBE = V.VFIO_DEVICE_FEATURE_GET, V.VFIO_DEVICE_FEATURE_SET, V.VFIO_DEVICE_FEATURE_PROBE
DMA_BUF = V.VFIO_DEVICE_FEATURE_DMA_BUF
GOOD = GET | DMA_BUF
K4, M4 = 4096, 4 << 20
O_RDONLY, O_WRONLY, O_RDWR, O_APPEND = 0, 1, 2, 0o2000
O_NONBLOCK, O_CLOEXEC = V.O_NONBLOCK, V.O_CLOEXEC
VFIO_MODULES = ("vfio", "vfio_iommu_type1", "vfio_pci_core", "vfio_pci", "vgem")
TESTDEV = "0x1b36:0x0005"  # QEMU's pci-testdev
NVME = "0x1b36:0x0010"  # QEMU's NVMe controller: a PM capability (D3hot) and PCIe FLR
QEMU_ARGS = [
    "-M", "q35", "-cpu", "qemu64",
    "-device", "intel-iommu,intremap=on",
    "-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1,addr=0x1",
    "-device", "pci-testdev,membar=4M,bus=rp1",
    "-device", "pcie-root-port,id=rp2,bus=pcie.0,chassis=2,slot=2,addr=0x2",
    "-device", "nvme,serial=vfio,bus=rp2",
]
APPEND = "intel_iommu=on"


def hdr(argsz: int, flags: int) -> bytes:
    return V.FEATURE_HDR.pack(argsz, flags)


def body(region: int, nr: int, ranges: list[tuple[int, int]] | tuple[()] = (), *, open_flags: int = O_CLOEXEC,
         req_flags: int = 0) -> bytes:
    return V.DMA_BUF_HDR.pack(region, open_flags, req_flags, nr) + b"".join(V.DMA_RANGE.pack(o, n) for o, n in ranges)


def req(region: int, ranges: list[tuple[int, int]], *, open_flags: int = O_CLOEXEC) -> bytes:
    return V.dma_buf_request(region, ranges, open_flags=open_flags)


def feat(feature: int, flags: int, payload: bytes = b"", argsz: int | None = None) -> bytes:
    return V.feature_request(feature, flags, payload, argsz)


@dataclass(frozen=True)
class Case:
    """One guest step: ``op`` feat/keep (VFIO_DEVICE_FEATURE on ``data``), cmd (PCI command register write of
    ``value``), reset (VFIO_DEVICE_RESET), mmap / sync / close of the kept dma-buf. ``want`` is the errno the
    kernel's source gives (0: success), so a guest that silently runs another case fails; ``why`` names the
    kernel function that answers."""

    name: str
    op: str
    want: int
    why: str
    data: bytes = b""
    value: int = 0
    size: int | None = None  # for a new dma-buf: its size
    getfl: int | None = None  # and its F_GETFL
    blocked: bool = False  # bg* steps: the call is still inside the kernel WAIT_MS after it started
    cap: int = 0  # capw / bgcapw: the standard capability ID and the offset in it that `value` goes to
    off: int = 0

    def line(self) -> str:
        if self.op in ("feat", "keep", "bgfeat"):
            return f"{self.op} {self.name} {self.data.hex() or '-'}"
        if self.op in ("capw", "bgcapw"):
            return f"{self.op} {self.name} {self.cap:#x} {self.off:#x} {self.value:#x}"
        if self.op in ("cmd", "bgcmd"):
            return f"{self.op} {self.name} {self.value:#x}"
        return f"{self.op} {self.name}"


VIOCTL = "vfio_ioctl_device_feature()"
CHECK = "vfio_check_feature()"
DMAF = "vfio_pci_core_feature_dma_buf()"
VALID = "validate_dmabuf_input()"
FILL = "vfio_pci_core_fill_phys_vec()"
PHYS = "vfio_pci_core_get_dmabuf_phys()"
GETFILE = "dma_buf_getfile() keeps O_ACCMODE|O_NONBLOCK, dma_buf_fd() takes O_CLOEXEC"
ONE = [(0, K4)]


def _ok(name: str, data: bytes, size: int, getfl: int = O_RDONLY, why: str = DMAF, op: str = "feat") -> Case:
    return Case(name, op, 0, why, data, size=size, getfl=getfl)


def _e(name: str, data: bytes, want: int, why: str) -> Case:
    return Case(name, "feat", want, why, data)


CASES: tuple[Case, ...] = (
    # -- the feature header: vfio_ioctl_device_feature() (drivers/vfio/vfio_main.c)
    _e("hdr-empty", b"", errno.EFAULT, f"{VIOCTL}: copy_from_user() of argsz+flags"),
    _e("hdr-7-bytes", hdr(24, GOOD)[:7], errno.EFAULT, f"{VIOCTL}: copy_from_user() of argsz+flags"),
    _e("argsz-0", hdr(0, GOOD) + body(2, 1, ONE), errno.EINVAL, f"{VIOCTL}: argsz < minsz"),
    _e("argsz-7", hdr(7, GOOD) + body(2, 1, ONE), errno.EINVAL, f"{VIOCTL}: argsz < minsz"),
    _e("flag-bit-19", hdr(40, GOOD | 1 << 19) + body(2, 1, ONE), errno.EINVAL, f"{VIOCTL}: unknown flags"),
    _e("flag-bit-31", hdr(40, GOOD | 1 << 31) + body(2, 1, ONE), errno.EINVAL, f"{VIOCTL}: unknown flags"),
    _e("flag-bit-19-unknown-feature", hdr(8, GET | 1 << 19 | 0x1234), errno.EINVAL, f"{VIOCTL}: flags first"),
    _e("get-and-set", hdr(40, GET | SET | DMA_BUF) + body(2, 1, ONE), errno.EINVAL, f"{VIOCTL}: GET & SET"),
    # -- vfio_check_feature(flags, argsz, GET, sizeof(struct vfio_device_feature_dma_buf)) in DMA_BUF
    _e("dmabuf-probe-get", hdr(8, PROBE | GET | DMA_BUF), 0, f"{CHECK}: PROBE"),
    _e("dmabuf-probe-alone", hdr(8, PROBE | DMA_BUF), 0, f"{CHECK}: PROBE without GET/SET"),
    _e("dmabuf-probe-set", hdr(8, PROBE | SET | DMA_BUF), errno.EINVAL, f"{CHECK}: SET not supported"),
    _e("dmabuf-probe-get-set", hdr(8, PROBE | GET | SET | DMA_BUF), errno.EINVAL, f"{CHECK}: SET not supported"),
    _e("dmabuf-set", hdr(40, SET | DMA_BUF) + body(2, 1, ONE), errno.EINVAL, f"{CHECK}: SET not supported"),
    _e("dmabuf-no-get-set-probe", hdr(40, DMA_BUF) + body(2, 1, ONE), errno.EINVAL, f"{CHECK}: neither GET nor SET"),
    _e("dmabuf-argsz-8", hdr(8, GOOD) + body(2, 1, ONE), errno.EINVAL, f"{CHECK}: argsz < minsz"),
    _e("dmabuf-argsz-23", hdr(23, GOOD) + body(2, 1, ONE), errno.EINVAL, f"{CHECK}: argsz < minsz"),
    _ok("dmabuf-argsz-u32-max", hdr(0xFFFFFFFF, GOOD) + body(2, 1, ONE), K4, O_RDONLY,
        f"{VIOCTL}: argsz has no upper bound"),
    _e("dmabuf-probe-garbage-payload", hdr(40, PROBE | GOOD) + body(99, 0, req_flags=7), 0,
       f"{CHECK}: PROBE returns before the payload is read"),
    _e("dmabuf-probe-argsz-0", hdr(0, PROBE | GOOD), errno.EINVAL, f"{VIOCTL}: argsz < minsz before PROBE"),
    _ok("dmabuf-argsz-24-ranges-unchecked", hdr(24, GOOD) + body(2, 1, ONE), K4, O_RDONLY,
        f"{DMAF}: argsz covers the header only, memdup_array_user() reads nr_ranges"),
    _e("dmabuf-body-truncated", (hdr(24, GOOD) + body(2, 1, ONE))[:18], errno.EFAULT,
       f"{DMAF}: copy_from_user() of the dma_buf header"),
    # -- the dma_buf header
    _e("nr-ranges-0", hdr(24, GOOD) + body(2, 0), errno.EINVAL, f"{DMAF}: !nr_ranges"),
    _e("req-flags-1", hdr(40, GOOD) + body(2, 1, ONE, req_flags=1), errno.EINVAL, f"{DMAF}: flags"),
    _e("req-flags-bit-31", hdr(40, GOOD) + body(2, 1, ONE, req_flags=1 << 31), errno.EINVAL, f"{DMAF}: flags"),
    _e("nr-0-and-bad-region", hdr(24, GOOD) + body(9, 0), errno.EINVAL, f"{DMAF}: nr_ranges before the region"),
    # -- region_index: >= VFIO_PCI_ROM_REGION_INDEX, or vfio_pci_core_get_iomap() an error pointer
    _e("region-3-upper-half", req(3, ONE), errno.ENODEV, f"{DMAF}: get_iomap() of a zero-length BAR"),
    _e("region-4-absent", req(4, ONE), errno.ENODEV, f"{DMAF}: get_iomap() of a zero-length BAR"),
    _e("region-5-absent", req(5, ONE), errno.ENODEV, f"{DMAF}: get_iomap() of a zero-length BAR"),
    _e("region-6-rom", req(6, ONE), errno.ENODEV, f"{DMAF}: region_index >= VFIO_PCI_ROM_REGION_INDEX"),
    _e("region-7-config", req(7, ONE), errno.ENODEV, f"{DMAF}: region_index >= VFIO_PCI_ROM_REGION_INDEX"),
    _e("region-8-vga", req(8, ONE), errno.ENODEV, f"{DMAF}: region_index >= VFIO_PCI_ROM_REGION_INDEX"),
    _e("region-u32-max", req(0xFFFFFFFF, ONE), errno.ENODEV, f"{DMAF}: region_index >= ROM"),
    _e("region-4-bad-ranges", req(4, [(1, 1)]), errno.ENODEV, f"{DMAF}: ENODEV before the ranges are read"),
    _e("region-4-nr-huge", hdr(24, GOOD) + body(4, 0xFFFFFFFF), errno.ENODEV, f"{DMAF}: ENODEV before memdup"),
    _e("region-1-io-bar", req(1, ONE), errno.EINVAL, f"{PHYS}: pcim_p2pdma_provider() is NULL for an I/O BAR"),
    _ok("region-0-mmio-4k", req(0, ONE), K4),
    _e("region-0-past-4k", req(0, [(0, 2 * K4)]), errno.EINVAL, f"{FILL}: end > max_addr"),
    # -- nr_ranges against the bytes there (memdup_array_user(): EFAULT past them, ENOMEM above KMALLOC_MAX_SIZE)
    _e("nr-2-one-given", hdr(40, GOOD) + body(2, 2, ONE), errno.EFAULT, f"{DMAF}: memdup_array_user() faults"),
    _e("nr-65536-one-given", hdr(40, GOOD) + body(2, 1 << 16, ONE), errno.EFAULT, f"{DMAF}: memdup_array_user()"),
    _e("nr-262144-4mib-one-given", hdr(40, GOOD) + body(2, 1 << 18, ONE), errno.EFAULT,
       f"{DMAF}: 4 MiB is KMALLOC_MAX_SIZE: allocated, then the copy faults"),
    _e("nr-262145-above-kmalloc-max", hdr(40, GOOD) + body(2, (1 << 18) + 1, ONE), errno.ENOMEM,
       f"{DMAF}: memdup_array_user() -> kmalloc() beyond KMALLOC_MAX_SIZE"),
    _e("nr-u32-max", hdr(40, GOOD) + body(2, 0xFFFFFFFF, ONE), errno.ENOMEM, f"{DMAF}: memdup_array_user()"),
    # -- validate_dmabuf_input(): non-empty, page-aligned, no overflow, not DMA_IOVA_USE_SWIOTLB
    _ok("bar2-first-page", req(2, ONE), K4),
    _ok("bar2-whole", req(2, [(0, M4)]), M4),
    _ok("bar2-last-page", req(2, [(M4 - K4, K4)]), K4),
    _e("bar2-length-0", req(2, [(0, 0)]), errno.EINVAL, f"{VALID}: !len"),
    _e("bar2-offset-1", req(2, [(1, K4)]), errno.EINVAL, f"{VALID}: offset not page aligned"),
    _e("bar2-offset-2048", req(2, [(2048, K4)]), errno.EINVAL, f"{VALID}: offset not page aligned"),
    _e("bar2-length-4097", req(2, [(0, K4 + 1)]), errno.EINVAL, f"{VALID}: length not page aligned"),
    _e("bar2-length-100", req(2, [(0, 100)]), errno.EINVAL, f"{VALID}: length not page aligned"),
    _e("bar2-length-bit-63", req(2, [(0, 1 << 63)]), errno.EINVAL, f"{VALID}: DMA_IOVA_USE_SWIOTLB bit"),
    _e("bar2-total-overflow", req(2, [(0, 1 << 63), (0, 1 << 63)]), errno.EINVAL, f"{VALID}: check_add_overflow"),
    _e("bar2-unaligned-second", req(2, [(0, K4), (K4, 10)]), errno.EINVAL, f"{VALID}: every range"),
    _e("bar2-empty-third", req(2, [(0, K4), (K4, K4), (0, 0)]), errno.EINVAL, f"{VALID}: every range"),
    # -- vfio_pci_core_fill_phys_vec(): inside the BAR, no overflow of start + offset + length
    _e("bar2-past-end", req(2, [(M4, K4)]), errno.EINVAL, f"{FILL}: end > max_addr"),
    _e("bar2-8mib", req(2, [(0, 2 * M4)]), errno.EINVAL, f"{FILL}: end > max_addr"),
    _e("bar2-straddles-end", req(2, [(M4 - K4, 2 * K4)]), errno.EINVAL, f"{FILL}: end > max_addr"),
    _e("bar2-offset-overflows", req(2, [((1 << 64) - K4, K4)]), errno.EOVERFLOW,
       f"{FILL}: check_add_overflow(start, offset)"),
    _e("bar2-end-overflows", req(2, [(0, (1 << 63) - K4)]), errno.EINVAL,
       f"{FILL}: start + len below 2^64 but past the BAR"),
    _e("bar2-second-past-end", req(2, [(0, K4), (M4, K4)]), errno.EINVAL, f"{FILL}: every range"),
    # -- several ranges (struct phys_vec per range; the size is the sum)
    _ok("bar2-three-ranges", req(2, [(0, K4), (8 * K4, 2 * K4), (M4 - K4, K4)]), 4 * K4),
    _ok("bar2-overlapping-ranges", req(2, [(0, K4), (0, K4)]), 2 * K4),
    _ok("bar2-1024-pages", req(2, [(k * K4, K4) for k in range(1024)]), M4),
    _ok("bar2-whole-twice", req(2, [(0, M4), (0, M4)]), 2 * M4),
    # -- open_flags: dma_buf_getfile() keeps O_ACCMODE | O_NONBLOCK; dma_buf_fd() takes O_CLOEXEC for the fd
    _ok("open-flags-0", req(2, ONE, open_flags=0), K4, O_RDONLY, GETFILE),
    _ok("open-flags-rdwr", req(2, ONE, open_flags=O_RDWR), K4, O_RDWR, GETFILE),
    _ok("open-flags-rdwr-cloexec", req(2, ONE, open_flags=O_RDWR | O_CLOEXEC), K4, O_RDWR, GETFILE),
    _ok("open-flags-wronly-nonblock", req(2, ONE, open_flags=O_WRONLY | O_NONBLOCK), K4, O_WRONLY | O_NONBLOCK,
        GETFILE),
    _ok("open-flags-accmode-3", req(2, ONE, open_flags=3), K4, 3, GETFILE),
    _ok("open-flags-append-dropped", req(2, ONE, open_flags=O_RDWR | O_APPEND), K4, O_RDWR, GETFILE),
    _ok("open-flags-u32-max", req(2, ONE, open_flags=0xFFFFFFFF), K4, 3 | O_NONBLOCK, GETFILE),
    # -- other feature numbers, answered by vfio core or vfio-pci themselves
    _e("feat-0-vf-token-get", feat(0, GET, bytes(16)), errno.ENOTTY,
       "vfio_pci_core_feature_token(): !vdev->vf_token"),
    _e("feat-0-vf-token-probe-set", feat(0, PROBE | SET), errno.ENOTTY, "vfio_pci_core_feature_token()"),
    _e("feat-1-migration-get", feat(1, GET, bytes(8)), errno.ENOTTY,
       "vfio_ioctl_device_feature_migration(): !device->mig_ops"),
    _e("feat-2-mig-state-set", feat(2, SET, bytes(8)), errno.ENOTTY,
       "vfio_ioctl_device_feature_mig_device_state(): !device->mig_ops"),
    _e("feat-6-logging-start", feat(6, SET, bytes(24)), errno.ENOTTY,
       "vfio_ioctl_device_feature_logging_start(): !device->log_ops"),
    _e("feat-7-logging-stop", feat(7, SET), errno.ENOTTY, "vfio_ioctl_device_feature_logging_stop()"),
    _e("feat-8-logging-report", feat(8, GET, bytes(24)), errno.ENOTTY, "vfio_ioctl_device_feature_logging_report()"),
    _e("feat-9-mig-data-size", feat(9, GET, bytes(8)), errno.ENOTTY,
       "vfio_ioctl_device_feature_migration_data_size(): !device->mig_ops"),
    _e("feat-12-precopy-v2-set", feat(12, SET), errno.EINVAL,
       "vfio_ioctl_device_feature_migration_precopy_info_v2(): no VFIO_MIGRATION_PRE_COPY"),
    _e("feat-12-precopy-v2-probe-set", feat(12, PROBE | SET), errno.EINVAL,
       "vfio_ioctl_device_feature_migration_precopy_info_v2(): before vfio_check_feature()"),
    _e("feat-10-bus-master", feat(10, SET, bytes(8)), errno.ENOTTY, "vfio_pci_core_ioctl_feature(): default"),
    _e("feat-13", feat(13, GET), errno.ENOTTY, "vfio_pci_core_ioctl_feature(): default"),
    _e("feat-ffff", feat(0xFFFF, PROBE | GET), errno.ENOTTY, "vfio_pci_core_ioctl_feature(): default"),
    _e("feat-3-pm-entry-get", feat(3, GET), errno.EINVAL, "vfio_pci_core_pm_entry(): vfio_check_feature(SET)"),
    _e("feat-3-pm-entry-probe-get", feat(3, PROBE | GET), errno.EINVAL, "vfio_pci_core_pm_entry()"),
    _e("feat-3-pm-entry-probe-set", feat(3, PROBE | SET), 0, "vfio_pci_core_pm_entry(): PROBE"),
    _e("feat-3-pm-entry-none", feat(3, 0), errno.EINVAL, "vfio_check_feature(): neither GET nor SET"),
    _e("feat-4-pm-wakeup-get", feat(4, GET, struct.pack("<iI", 0, 0)), errno.EINVAL,
       "vfio_pci_core_pm_entry_with_wakeup(): vfio_check_feature(SET)"),
    _e("feat-4-pm-wakeup-probe-set", feat(4, PROBE | SET), 0, "vfio_pci_core_pm_entry_with_wakeup(): PROBE"),
    _e("feat-4-pm-wakeup-argsz-8", feat(4, SET), errno.EINVAL, f"{CHECK}: argsz < sizeof(wakeup entry)"),
    _e("feat-4-pm-wakeup-argsz-12-fd-900", feat(4, SET, struct.pack("<i", 900)), errno.EINVAL,
       f"{CHECK}: argsz 4 < sizeof(struct vfio_device_low_power_entry_with_wakeup) = 8 (with reserved)"),
    _e("feat-4-pm-wakeup-fd-minus-1", feat(4, SET, struct.pack("<iI", -1, 0)), errno.EINVAL,
       "vfio_pci_core_pm_entry_with_wakeup(): wakeup_eventfd < 0"),
    _e("feat-4-pm-wakeup-fd-900", feat(4, SET, struct.pack("<iI", 900, 0)), errno.EBADF,
       "vfio_pci_core_pm_entry_with_wakeup(): eventfd_ctx_fdget() of a closed fd"),
    _e("feat-5-pm-exit-get", feat(5, GET), errno.EINVAL, "vfio_pci_core_pm_exit(): vfio_check_feature(SET)"),
    _e("feat-5-pm-exit-probe-set", feat(5, PROBE | SET), 0, "vfio_pci_core_pm_exit(): PROBE"),
    # -- lifetime: a kept dma-buf across decode off/on and reset (vfio_basic_config_write(),
    #    vfio_pci_ioctl_reset() -> vfio_pci_dma_buf_move()); the file itself shows no revoke (see the test below)
    _ok("keep-bar2-page", req(2, ONE, open_flags=O_RDWR), K4, O_RDWR, op="keep"),
    Case("kept-mmap", "mmap", errno.EINVAL, "dma_buf_mmap_internal(): vfio_pci_dmabuf_ops has no .mmap"),
    Case("kept-sync-file", "sync", 0, "dma_buf_export_sync_file(): no fences, a signalled stub"),
    Case("decode-off", "cmd", 0, "vfio_basic_config_write(): memory bit cleared -> dma_buf_move(true)", value=0),
    Case("revoked-sync-file", "sync", 0, "dma_buf_export_sync_file(): the file knows nothing of revoked"),
    Case("revoked-mmap", "mmap", errno.EINVAL, "dma_buf_mmap_internal()"),
    _ok("export-decode-off", req(2, ONE), K4, why=f"{DMAF}: born revoked (!__vfio_pci_memory_enabled()), still an fd"),
    _e("export-decode-off-bad", req(2, [(M4, K4)]), errno.EINVAL, f"{FILL}: checks still run with decode off"),
    Case("decode-on", "cmd", 0, "vfio_basic_config_write(): memory bit set -> dma_buf_move(false)",
         value=V.PCI_COMMAND_MEMORY),
    Case("decode-on-again", "cmd", 0, "vfio_basic_config_write(): no change of the bit", value=V.PCI_COMMAND_MEMORY),
    Case("reset", "reset", 0, "vfio_pci_ioctl_reset(): revoke, pci_try_reset_function(), un-revoke"),
    Case("reset-sync-file", "sync", 0, "dma_buf_export_sync_file()"),
    _ok("export-after-reset", req(2, [(0, M4)]), M4),
    Case("close-kept", "close", 0, "dma_buf_release() -> vfio_pci_dma_buf_release()"),
    # -- blocking: an unsignalled vgem fence in the buffer's reservation object. vfio_pci_dma_buf_move() waits in
    #    dma_resv_wait_timeout(BOOKKEEP) under memory_lock, for a revoke and for an un-revoke alike; an export
    #    issued meanwhile sleeps in down_write(&vdev->memory_lock) and returns once the move is done.
    _ok("keep-fenced", req(2, ONE), K4, op="keep"),
    Case("fence-1", "fence", 0, "dma_buf_import_sync_file(): WRITE fence added under dma_resv_lock()"),
    Case("fenced-decode-off", "bgcmd", 0, "vfio_pci_dma_buf_move(true): dma_resv_wait_timeout()", value=0,
         blocked=True),
    Case("export-during-revoke", "bgfeat", 0, f"{DMAF}: down_write(&vdev->memory_lock)", req(2, [(0, 2 * K4)]),
         size=2 * K4, getfl=O_RDONLY, blocked=True),
    Case("signal-1", "signal", 0, "dma_fence_signal() wakes the move; memory_lock goes to the export"),
    Case("fence-2", "fence", 0, "dma_buf_import_sync_file()"),
    Case("fenced-decode-on", "bgcmd", 0, "vfio_pci_dma_buf_move(false): waits for fences before revoked = false",
         value=V.PCI_COMMAND_MEMORY, blocked=True),
    Case("signal-2", "signal", 0, "dma_fence_signal()"),
    Case("fence-3", "fence", 0, "dma_buf_import_sync_file()"),
    Case("fenced-reset", "bgreset", 0, "vfio_pci_ioctl_reset() -> vfio_pci_dma_buf_move(true)", blocked=True),
    Case("export-during-reset", "bgfeat", 0, f"{DMAF}: behind the reset's memory_lock", req(2, ONE),
         size=K4, getfl=O_RDONLY, blocked=True),
    Case("signal-3", "signal", 0, "dma_fence_signal()"),
    Case("fence-4", "fence", 0, "dma_buf_import_sync_file()"),
    Case("fenced-decode-on-unchanged", "bgcmd", 0, "vfio_basic_config_write(): bit unchanged, no move, no wait",
         value=V.PCI_COMMAND_MEMORY, blocked=False),
    Case("signal-4", "signal", 0, "dma_fence_signal()"),
    Case("close-fenced", "close", 0, "dma_buf_release()"),
    # -- runtime PM last (it changes the device's power bookkeeping): vfio_pci_runtime_pm_entry() / _exit()
    _e("feat-3-pm-entry-set", feat(3, SET), 0, "vfio_pci_runtime_pm_entry()"),
    _e("feat-3-pm-entry-again", feat(3, SET), errno.EINVAL, "vfio_pci_runtime_pm_entry(): pm_runtime_engaged"),
    _e("feat-5-pm-exit-set", feat(5, SET), 0, "vfio_pci_runtime_pm_exit()"),
    _e("feat-5-pm-exit-again", feat(5, SET), 0, "vfio_pci_runtime_pm_exit(): not engaged, still 0"),
    _ok("export-after-pm-exit", req(2, ONE), K4),
    # LOW_POWER_ENTRY revokes first (vfio_pci_runtime_pm_entry() -> vfio_pci_dma_buf_move(true)): it waits too
    _ok("keep-pm", req(2, ONE), K4, op="keep"),
    Case("fence-6", "fence", 0, "dma_buf_import_sync_file()"),
    Case("fenced-pm-entry", "bgfeat", 0, "vfio_pci_runtime_pm_entry(): vfio_pci_dma_buf_move(true) waits",
         feat(3, SET), blocked=True),
    Case("signal-6", "signal", 0, "dma_fence_signal()"),
    _e("pm-exit-after-fenced-entry", feat(5, SET), 0, "vfio_pci_runtime_pm_exit()"),
    Case("close-pm", "close", 0, "dma_buf_release()"),
    # -- the end of the device: unbind while user space holds it open sleeps in vfio_unregister_group_dev() until
    #    the last registration reference goes; the close runs vfio_pci_dma_buf_cleanup(), whose revoke waits for
    #    the fence; the dma-buf file outlives the device (priv->vdev = NULL)
    _ok("keep-final", req(2, ONE), K4, op="keep"),
    Case("fence-5", "fence", 0, "dma_buf_import_sync_file()"),
    Case("unbind-while-open", "bgunbind", 0, "vfio_unregister_group_dev(): wait_for_completion(&device->comp)",
         blocked=True),
    Case("export-during-unbind", "bgfeat", 0,
         f"{DMAF}: vfio_device_try_get_registration() while the open fd holds a reference", req(2, ONE),
         size=K4, getfl=O_RDONLY, blocked=False),
    Case("close-device-fenced", "bgclose", 0, "vfio_pci_core_close_device() -> vfio_pci_dma_buf_cleanup()",
         blocked=True),
    Case("signal-5", "signal", 0, "dma_fence_signal(): the close goes on, then the unbind"),
    Case("final-sync-file", "sync", 0, "dma_buf_export_sync_file(): the file outlives the device"),
    Case("close-final", "close", 0, "dma_buf_release(): priv->vdev is NULL, nothing to unlink"),
)

PCI_CAP_ID_PM, PCI_PM_CTRL = 0x01, 4
PCI_CAP_ID_EXP, PCI_EXP_DEVCTL, PCI_EXP_DEVCTL_BCR_FLR = 0x10, 8, 0x8000

# The NVMe controller: the revoke triggers pci-testdev lacks (it has no capabilities). vfio_pm_config_write() ->
# vfio_lock_and_set_power_state(): D3hot revokes first (and waits for the fences); D0 un-revokes when memory is
# enabled. vfio_exp_config_write(): PCI_EXP_DEVCTL_BCR_FLR with PCI_EXP_DEVCAP_FLR revokes, resets, un-revokes.
NVME_CASES: tuple[Case, ...] = (
    _ok("nvme-bar0-page", req(0, ONE), K4),
    _e("nvme-region-1-upper-half", req(1, ONE), errno.ENODEV, f"{DMAF}: get_iomap() of a zero-length BAR"),
    _e("nvme-bar0-past-1mib", req(0, [(1 << 20, K4)]), errno.EINVAL, f"{FILL}: end > max_addr"),
    _ok("nvme-keep", req(0, ONE, open_flags=O_RDWR | O_CLOEXEC), K4, O_RDWR, op="keep"),
    Case("nvme-fence-1", "fence", 0, "dma_buf_import_sync_file()"),
    Case("nvme-d3hot", "bgcapw", 0, "vfio_lock_and_set_power_state(D3hot): vfio_pci_dma_buf_move(true) waits",
         value=3, cap=PCI_CAP_ID_PM, off=PCI_PM_CTRL, blocked=True),
    Case("nvme-signal-1", "signal", 0, "dma_fence_signal()"),
    _ok("nvme-export-in-d3hot", req(0, ONE), K4,
        why=f"{DMAF}: born revoked (__vfio_pci_memory_enabled() is false in D3hot), still an fd"),
    Case("nvme-d0", "capw", 0, "vfio_lock_and_set_power_state(D0): no revoke, un-revoke without fences",
         value=0, cap=PCI_CAP_ID_PM, off=PCI_PM_CTRL),
    Case("nvme-fence-2", "fence", 0, "dma_buf_import_sync_file()"),
    Case("nvme-flr", "bgcapw", 0, "vfio_exp_config_write(): BCR_FLR -> vfio_pci_dma_buf_move(true) waits",
         value=PCI_EXP_DEVCTL_BCR_FLR, cap=PCI_CAP_ID_EXP, off=PCI_EXP_DEVCTL, blocked=True),
    Case("nvme-signal-2", "signal", 0, "dma_fence_signal()"),
    _ok("nvme-export-after-flr", req(0, ONE), K4),
    Case("nvme-sync", "sync", 0, "dma_buf_export_sync_file()"),
    Case("nvme-close", "close", 0, "dma_buf_release()"),
)

# Cases where the model is known to differ from 7.2 (strict xfail: name -> the kernel function and the difference).
MODEL_DIFFERS: dict[str, str] = {}  # none: the two found here (the wakeup entry's 8-byte minsz, exports while an
# unbind waits for the close) were fixed in src/p2pdma/model/vfio.py

# Steps whose outcome the model does not represent (the dma-buf file's own mmap and sync-file ioctls): checked
# against the kernel source only.
KERNEL_ONLY = ("mmap", "sync", "close")
BACKGROUND = ("bgcmd", "bgreset", "bgfeat", "bgunbind", "bgclose", "bgcapw")
DEVICE_CASES: dict[str, tuple[Case, ...]] = {"testdev": CASES, "nvme": NVME_CASES}


# ---------------------------------------------------------------------------------------------- the boot

INIT = guest.CAPTURE + r"""
bind() {
  BDF=""
  for d in /sys/bus/pci/devices/*; do
    [ "$(cat $d/vendor):$(cat $d/device)" = "$1" ] && BDF=$(basename $d)
  done
  echo vfio-pci > /sys/bus/pci/devices/$BDF/driver_override
  echo $BDF > /sys/bus/pci/drivers_probe
  echo "$2 $BDF $(basename $(readlink /sys/bus/pci/devices/$BDF/driver))" >> /out/bound.txt
}
bind @TESTDEV@ testdev
bind @NVME@ nvme
ls /dev/vfio >> /out/bound.txt
capture root
run() {
  BDF=$(sed -n "s/^$1 \([^ ]*\) .*/\1/p" /out/bound.txt)
  T0=$(cat /proc/uptime)
  /bin/vfio_guest $BDF /$1-cases.txt /out/$1-results.txt > /out/$1-guest.log 2>&1
  echo "rc=$? $T0 $(cat /proc/uptime)" >> /out/$1-guest.log
}
run testdev
run nvme
""".replace("@TESTDEV@", TESTDEV).replace("@NVME@", NVME)


def uapi_7_2() -> Path:
    """The usr/include of Debian's linux-libc-dev 7.2.13-1 as .ci/kernel-setup extracted it."""
    inc = qemu.cache_dir() / f"uapi-{qemu.RELEASE_7_2}" / "usr" / "include"
    if not (inc / "linux" / "vfio.h").exists():
        raise qemu.Unavailable(f"the 7.2 uAPI headers are not in {inc}: {qemu.SETUP_HINT}")
    return inc


def build_guest_client() -> Path:
    """tests/kernel/vfio_guest.c, gcc -static against the 7.2 uAPI headers (before the system's), cached by the
    hash of the source."""
    src = Path(__file__).with_name("vfio_guest.c")
    inc = uapi_7_2()
    gcc = shutil.which("gcc")
    if gcc is None:
        raise qemu.Unavailable(f"gcc not found: {qemu.SETUP_HINT}")
    key = hashlib.sha256(src.read_bytes() + str(inc).encode()).hexdigest()[:16]
    out = qemu.cache_dir() / f"vfio_guest-{key}"
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        proc = subprocess.run(
            [gcc, "-static", "-O1", "-Wall", "-Werror", "-isystem", str(inc), "-isystem",
             str(inc / "x86_64-linux-gnu"), "-o", str(tmp), str(src)],
            capture_output=True, text=True, check=False, timeout=120)
        if proc.returncode != 0:
            if "cannot find -lc" in proc.stderr:
                raise qemu.Unavailable(f"no static libc (libc6-dev) for gcc -static: {qemu.SETUP_HINT}")
            raise AssertionError(f"vfio_guest.c does not build:\n{proc.stderr}")
        tmp.replace(out)
    return out


@dataclass
class GuestRun:
    """One device's share of the boot: its BDF, its cases and the lines the client wrote."""

    result: qemu.BootResult
    root: Path
    bdf: str
    cases: tuple[Case, ...]
    lines: dict[str, tuple[int, int, int, int, int]]  # name -> rc, errno, F_GETFL, cloexec, size
    guest_seconds: float


_RUN: dict[str, dict[str, GuestRun] | str] = {}


def _boot(tmp_path_factory: pytest.TempPathFactory) -> dict[str, GuestRun]:
    """The one boot of this module (both devices), or a skip when QEMU, the kernel or the headers are missing."""
    if "run" not in _RUN:
        try:
            qemu.qemu_binary()
            kernel = qemu.kernel_7_2()
            client = build_guest_client()
            files: dict[str, Path | bytes] = {"/bin/vfio_guest": client}
            for dev, cases in DEVICE_CASES.items():
                files[f"/{dev}-cases.txt"] = "".join(c.line() + "\n" for c in cases).encode()
            image = qemu.build_initramfs("vfio-dmabuf", INIT, files=files, modules=VFIO_MODULES, kernel=kernel)
        except qemu.Unavailable as e:
            _RUN["run"] = str(e)
        else:
            work = tmp_path_factory.mktemp("vfio")
            result = qemu.boot(kernel, image, QEMU_ARGS, append=APPEND, timeout=300)
            root = result.extract(work / "out")
            bound = {ln.split()[0]: ln.split()[1:] for ln in result.outputs.get("bound.txt", b"").decode().splitlines()
                     if len(ln.split()) == 3}
            runs = {}
            for dev, cases in DEVICE_CASES.items():
                assert dev in bound and bound[dev][1] == "vfio-pci", (
                    f"{dev} not bound to vfio-pci: {bound}; console:\n{result.console[-3000:]}")
                text = result.outputs.get(f"{dev}-results.txt", b"").decode()
                log = result.outputs.get(f"{dev}-guest.log", b"").decode()
                assert "FATAL" not in text, f"vfio_guest could not open {dev}: {text}\n{log}"
                lines = {}
                for ln in text.splitlines():
                    if ln.startswith("#"):
                        continue
                    name, *vals = ln.split()
                    lines[name] = tuple(int(v) for v in vals[:5])
                secs = 0.0
                last = log.strip().splitlines()[-1:] or [""]
                if last[0].startswith("rc="):
                    parts = last[0].split()
                    secs = float(parts[3]) - float(parts[1])
                runs[dev] = GuestRun(result, root, bound[dev][0], cases, lines, secs)  # type: ignore[arg-type]
            _RUN["run"] = runs
    got = _RUN["run"]
    if isinstance(got, str):
        pytest.skip(got)
    return got


@pytest.fixture(scope="module")
def vfio_run(tmp_path_factory: pytest.TempPathFactory) -> GuestRun:
    return _boot(tmp_path_factory)["testdev"]


@pytest.fixture(scope="module")
def nvme_run(tmp_path_factory: pytest.TempPathFactory) -> GuestRun:
    return _boot(tmp_path_factory)["nvme"]


def model_of(run: GuestRun) -> System:
    """A model System of the captured guest with the pci-testdev open through vfio-pci."""
    cap = run.root / "root.tar"
    if not cap.exists():
        with tarfile.open(cap, "w") as tar:
            for entry in sorted((run.root / "root").iterdir()):
                tar.add(entry, arcname=entry.name)
    topo = open_machine("root", cap)
    system = System(topo, profile="7.2")
    V.vfio_open(system, run.bdf)
    return system


@dataclass(frozen=True)
class Compared:
    case: Case
    kernel: tuple[int, int, int, int, int]
    model: V.FeatureAnswer | None
    problems: tuple[str, ...]


_COMPARED: dict[str, list[Compared]] = {}


def _capw(system: System, bdf: str, c: Case) -> bool:
    """A capability register write in the model: PMCSR power state, or PCIe DEVCTL with BCR_FLR."""
    if (c.cap, c.off) == (PCI_CAP_ID_PM, PCI_PM_CTRL):
        return V.vfio_set_power(system, bdf, "D3hot" if c.value & 3 == 3 else "D0")
    if (c.cap, c.off) == (PCI_CAP_ID_EXP, PCI_EXP_DEVCTL) and c.value & PCI_EXP_DEVCTL_BCR_FLR:
        return V.vfio_flr(system, bdf, "pcie")
    raise AssertionError(f"{c.name}: no model step for capability {c.cap:#x} offset {c.off}")


def _feature_problems(name: str, got: V.FeatureAnswer, done: tuple[int, int, int, int, int]) -> list[str]:
    """A feature call's model answer against the kernel's completion line (rc, errno, F_GETFL, cloexec, size)."""
    bad = []
    if got.errno != done[1]:
        bad.append(f"{name}: errno kernel {errno.errorcode.get(done[1], done[1])}, model"
                   f" {errno.errorcode.get(got.errno, got.errno)}")
    elif done[1] == 0 and (done[4] >= 0 or got.size is not None) and (got.size, got.file_flags) != (done[4], done[2]):
        bad.append(f"{name}: size/F_GETFL kernel {done[4]}/{done[2]:#o}, model {got.size}/{got.file_flags}")
    return bad


def compare_all(run: GuestRun) -> list[Compared]:
    """Every case through the model in the guest's order, next to the kernel's answer."""
    if run.bdf in _COMPARED:
        return _COMPARED[run.bdf]
    system = model_of(run)
    kept: int | None = None
    fence: int | None = None
    pending: list[tuple[Case, int | None]] = []  # background calls since the last signal (feature: its ticket)
    out: list[Compared] = []
    for c in run.cases:
        k = run.lines.get(c.name)
        if k is None:
            out.append(Compared(c, (0, 0, 0, 0, 0), None, ("the guest wrote no line",)))
            continue
        rc, kerr, getfl, cloexec, size = k
        bad: list[str] = []
        model: V.FeatureAnswer | None = None
        if c.op in ("feat", "keep"):
            model = V.uapi_feature(system, run.bdf, c.data)
            if model.blocked:
                bad.append("model blocks, the kernel returned")
            if model.errno != kerr:
                bad.append(f"errno: kernel {errno.errorcode.get(kerr, kerr)}, model "
                           f"{errno.errorcode.get(model.errno, model.errno)}")
            if kerr == 0 and size >= 0:
                if model.size is None:
                    bad.append("the kernel made a dma-buf, the model did not")
                else:
                    if model.size != size:
                        bad.append(f"size: kernel {size}, model {model.size}")
                    if model.file_flags != getfl:
                        bad.append(f"F_GETFL: kernel {getfl:#o}, model {model.file_flags:#o}")
                    if bool(model.cloexec) != bool(cloexec):
                        bad.append(f"FD_CLOEXEC: kernel {cloexec}, model {model.cloexec}")
            elif model.size is not None:
                bad.append("the model made a dma-buf, the kernel did not")
            if model.errno == 0 and model.size is not None:
                if c.op == "keep":
                    if kept is not None:
                        B.dma_buf_put(system, kept)
                    kept = model.result
                else:
                    B.dma_buf_put(system, model.result)
        elif c.op == "cmd":
            returned = V.vfio_set_memory(system, run.bdf, bool(c.value & V.PCI_COMMAND_MEMORY))
            if not returned:
                bad.append("model's config write blocks")
            if rc != 0:
                bad.append(f"kernel's config write failed: errno {kerr}")
        elif c.op == "capw":
            returned = _capw(system, run.bdf, c)
            if not returned:
                bad.append("model's config write blocks")
            if rc != 0:
                bad.append(f"kernel's config write failed: errno {errno.errorcode.get(kerr, kerr)}")
        elif c.op == "reset":
            returned = V.vfio_reset(system, run.bdf)
            if not returned:
                bad.append("model's reset blocks")
            if rc != 0:
                bad.append(f"kernel's VFIO_DEVICE_RESET failed: errno {errno.errorcode.get(kerr, kerr)}")
        elif c.op == "close" and kept is not None:
            B.dma_buf_put(system, kept)
            kept = None
        elif c.op == "fence":
            assert kept is not None, f"{c.name}: no kept buffer"
            fence = B.dma_buf_import_sync_file(system, kept, B.DMA_BUF_SYNC_WRITE)
            if rc != 0:
                bad.append(f"kernel's fence setup failed: errno {errno.errorcode.get(kerr, kerr)}")
        elif c.op in BACKGROUND:
            ticket: int | None = None
            if c.op == "bgcmd":
                mblocked = not V.vfio_set_memory(system, run.bdf, bool(c.value & V.PCI_COMMAND_MEMORY))
            elif c.op == "bgreset":
                mblocked = not V.vfio_reset(system, run.bdf)
            elif c.op == "bgcapw":
                mblocked = not _capw(system, run.bdf, c)
            elif c.op == "bgunbind":
                mblocked = not V.vfio_unbind(system, run.bdf)
            elif c.op == "bgclose":
                mblocked = not V.vfio_close(system, run.bdf)
            else:
                model = V.uapi_feature(system, run.bdf, c.data)
                mblocked, ticket = model.blocked, model.ticket
                done = run.lines.get(c.name + ".done")
                if not model.blocked and done is not None:  # returned at once: compared here
                    bad += _feature_problems(c.name, model, done)
                    if model.errno == 0 and model.size is not None:
                        B.dma_buf_put(system, model.result)  # the child's fd closed when it exited
            if mblocked != (rc == 1):
                bad.append(f"blocking: kernel {'sleeps' if rc == 1 else 'returned'}, model"
                           f" {'sleeps' if mblocked else 'returned'}")
            pending.append((c, ticket))
        elif c.op == "signal":
            assert kept is not None and fence is not None, f"{c.name}: no fence"
            B.dma_fence_signal(system, kept, fence)
            fence = None
            for bg, ticket in pending:
                done = run.lines.get(bg.name + ".done")
                if done is None:
                    bad.append(f"{bg.name}: the guest wrote no completion")
                    continue
                if bg.op == "bgfeat":
                    if ticket is None:
                        continue  # returned at once, compared at its own step
                    got = V.uapi_result(system, run.bdf, ticket)
                    if got is None:
                        bad.append(f"{bg.name}: still sleeps in the model after the signal")
                    else:
                        bad += _feature_problems(bg.name, got, done)
                        if got.errno == 0 and got.size is not None:
                            B.dma_buf_put(system, got.result)  # the child's fd closed when it exited
                elif bg.op == "bgunbind" and (V.unbind_waits(system, run.bdf) or run.bdf in system.bindings):
                    bad.append(f"{bg.name}: the model's unbind still waits after the signal")
                elif not V.revoke_done(system, run.bdf):
                    bad.append(f"{bg.name}: still sleeps in the model after the signal")
                elif done[:2] != (0, 0):
                    bad.append(f"{bg.name}: kernel's call failed: {done}")
            pending = []
        out.append(Compared(c, k, model, tuple(bad)))
    _COMPARED[run.bdf] = out
    return out


def _device_run(device: str, vfio_run: GuestRun, nvme_run: GuestRun) -> GuestRun:
    return vfio_run if device == "testdev" else nvme_run


@pytest.mark.parametrize("device", list(DEVICE_CASES))
def test_guest_ran_every_case_as_the_kernel_source_says(device: str, vfio_run: GuestRun, nvme_run: GuestRun) -> None:
    """Each step's errno is the one the 7.2 source gives (so the machine shows the case it was built for), and
    each new dma-buf has the size and F_GETFL derived from its request."""
    run = _device_run(device, vfio_run, nvme_run)
    missing = [c.name for c in run.cases if c.name not in run.lines]
    assert not missing, f"no result for {missing}; guest log:\n{run.result.outputs.get(device + '-guest.log')!r}"
    wrong = []
    for c in run.cases:
        rc, kerr, getfl, cloexec, size = run.lines[c.name]
        if c.op in BACKGROUND:
            done = run.lines.get(c.name + ".done")
            if rc != int(c.blocked):
                wrong.append(f"{c.name}: {'still inside' if rc else 'returned'} after the wait ({c.why})")
            elif done is None or done[1] != c.want:
                wrong.append(f"{c.name}: completion {done}, expected errno {c.want}")
            elif c.size is not None and (done[4], done[2]) != (c.size, c.getfl):
                wrong.append(f"{c.name}: dma-buf size {done[4]} F_GETFL {done[2]:#o}, expected {c.size}")
            continue
        if kerr != c.want:
            wrong.append(f"{c.name}: kernel {errno.errorcode.get(kerr, kerr)}, expected"
                         f" {errno.errorcode.get(c.want, c.want)} ({c.why})")
        elif c.size is not None and (size, getfl) != (c.size, c.getfl):
            wrong.append(f"{c.name}: dma-buf size {size} F_GETFL {getfl:#o}, expected {c.size} {c.getfl:#o}")
        elif c.size is not None and cloexec != int(bool(c.data[12:16] and
                                                         struct.unpack_from("<I", c.data, 12)[0] & O_CLOEXEC)):
            wrong.append(f"{c.name}: FD_CLOEXEC {cloexec}")
    assert not wrong, "\n".join(wrong)


def test_guest_bar_layout_is_the_one_the_cases_assume(vfio_run: GuestRun) -> None:
    """BAR0 4 KiB MMIO, BAR1 I/O, BAR2 4 MiB 64-bit memory, BAR3-5 empty (pci-testdev,membar=4M)."""
    res = (vfio_run.root / "root" / "sys" / "bus" / "pci" / "devices").resolve()
    dev = next(p for p in (vfio_run.root / "root" / "sys" / "devices").rglob(vfio_run.bdf) if p.is_dir())
    assert res is not None
    rows = [tuple(int(x, 16) for x in ln.split()) for ln in (dev / "resource").read_text().splitlines()]
    sizes = [(e - s + 1) if e else 0 for s, e, _f in rows[:6]]
    io = [bool(f & 0x100) for _s, _e, f in rows[:6]]
    assert sizes[0] == K4 and not io[0], rows[0]
    assert io[1], rows[1]
    assert sizes[2] == M4 and not io[2], rows[2]
    assert sizes[3:6] == [0, 0, 0], rows[3:6]


@pytest.mark.parametrize(("device", "case"), [
    pytest.param(dev, c, id=f"{dev}-{c.name}", marks=[pytest.mark.xfail(strict=True, reason=MODEL_DIFFERS[c.name])]
                 if c.name in MODEL_DIFFERS else [])
    for dev, cases in DEVICE_CASES.items() for c in cases if c.op not in KERNEL_ONLY])
def test_model_answers_as_the_running_kernel(device: str, case: Case, vfio_run: GuestRun, nvme_run: GuestRun) -> None:
    got = next(x for x in compare_all(_device_run(device, vfio_run, nvme_run)) if x.case.name == case.name)
    assert not got.problems, f"{case.name} ({case.why}): " + "; ".join(got.problems)


def test_revocation_is_invisible_through_the_dma_buf_file(vfio_run: GuestRun) -> None:
    """What user space can see of a revoke without an importer: nothing. The kept buffer's mmap() is EINVAL
    before and after decode off (vfio_pci_dmabuf_ops has no .mmap: dma_buf_mmap_internal()), and
    DMA_BUF_IOCTL_EXPORT_SYNC_FILE answers 0 before, while revoked and after the reset (dma_buf_export_sync_file()
    reads only the reservation object, which a revoke leaves without fences). The model agrees that the revoke
    and the reset return at once: no importer, nothing mapped, no fence to wait for."""
    for name in ("kept-mmap", "revoked-mmap"):
        assert vfio_run.lines[name][:2] == (-1, errno.EINVAL), (name, vfio_run.lines[name])
    for name in ("kept-sync-file", "revoked-sync-file", "reset-sync-file"):
        assert vfio_run.lines[name][:2] == (0, 0), (name, vfio_run.lines[name])
    system = model_of(vfio_run)
    buf = V.uapi_feature(system, vfio_run.bdf, req(2, ONE))
    assert V.vfio_set_memory(system, vfio_run.bdf, False)
    assert V.buffer_status(system, buf.result) == V.DmaBufStatus.TEMP_REVOKED
    assert V.vfio_reset(system, vfio_run.bdf) is True
    assert V.vfio_set_memory(system, vfio_run.bdf, True)
    assert V.buffer_status(system, buf.result) == V.DmaBufStatus.OK


def test_case_list_is_large_enough_and_named_once() -> None:
    names = [c.name for cases in DEVICE_CASES.values() for c in cases]
    assert len(names) == len(set(names))
    assert sum(c.op in ("feat", "keep") for c in CASES) >= 60


def test_timings(vfio_run: GuestRun, nvme_run: GuestRun, record_property) -> None:  # type: ignore[no-untyped-def]
    """The boot stays well inside the suite's budget (one boot for both devices; nine 1.5 s waits)."""
    record_property("boot_seconds", vfio_run.result.seconds)
    record_property("client_seconds", vfio_run.guest_seconds + nvme_run.guest_seconds)
    assert vfio_run.result.seconds < 180
    print(f"vfio-dmabuf boot {vfio_run.result.seconds:.1f} s, clients {vfio_run.guest_seconds:.1f} s +"
          f" {nvme_run.guest_seconds:.1f} s, {len(vfio_run.lines)} + {len(nvme_run.lines)} result lines")
