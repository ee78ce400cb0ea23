"""Boot Debian's kernels in QEMU on emulated PCIe machines and collect what the guest wrote.

The shared harness of the kernel conformance tests (tests/kernel/): it finds the kernels .ci/kernel-setup put in
the cache directory, builds small busybox initramfs images (cached by content), boots them under TCG only (nested
KVM fails on the CI machines) and returns the serial console and every file the guest left under /out.
"""

from __future__ import annotations

import base64
import hashlib
import io
import lzma
import os
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

RELEASE_7_2 = "7.2.13+deb14-amd64"
OUT_BEGIN = "=====P2PDMA-OUT-BEGIN====="
OUT_END = "=====P2PDMA-OUT-END====="
BUSYBOX = Path("/bin/busybox")


class Unavailable(Exception):
    """Something the kernel tests need cannot be had here (QEMU, a package, the network); the text says what."""


def cache_dir() -> Path:
    """Where downloads and builds are kept: $P2PDMA_KERNEL_CACHE, else ~/.cache/p2pdma-kernel."""
    env = os.environ.get("P2PDMA_KERNEL_CACHE")
    path = Path(env) if env else Path.home() / ".cache" / "p2pdma-kernel"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class KernelAssets:
    """One extracted kernel: its release string, the bzImage, and its lib/modules/<release> folder."""

    release: str
    vmlinuz: Path
    modules: Path


def _run(cmd: Sequence[str], cwd: Path | None = None, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


SETUP_HINT = "run `bash .ci/kernel-setup` (as root) to install QEMU, busybox-static and Debian's kernel packages"


def kernel_7_2() -> KernelAssets:
    """Debian unstable's Linux 7.2.13 (CONFIG_PCI_P2PDMA=y) as .ci/kernel-setup extracted it into cache_dir().

    linux-image-7.2.13+deb14-amd64 is a 1.9 KB meta package: the bzImage is in linux-binary-<release>, the
    modules in linux-modules-<release>, the config in linux-base-<release>; the setup script fetches those.
    """
    root = cache_dir() / f"linux-{RELEASE_7_2}"
    modules = root / "usr" / "lib" / "modules" / RELEASE_7_2
    vmlinuz = modules / "vmlinuz"
    if not (root / ".extracted").exists() or not vmlinuz.exists():
        raise Unavailable(f"Debian's {RELEASE_7_2} kernel is not in {root}: {SETUP_HINT}")
    return KernelAssets(release=RELEASE_7_2, vmlinuz=vmlinuz, modules=modules)


def kernel_6_1_p2pdma() -> KernelAssets:
    """Linux 6.1 built by `.ci/kernel-setup --build-6.1` from Debian's linux-source-6.1 with CONFIG_PCI_P2PDMA=y
    and everything the machines need built in (no modules)."""
    root = cache_dir() / "linux-6.1-p2pdma"
    if not (root / "bzImage").exists() or not (root / "release").exists():
        raise Unavailable(
            f"no Linux 6.1 with CONFIG_PCI_P2PDMA in {root} (Debian's 6.1 image is built without it): run"
            " `bash .ci/kernel-setup --build-6.1`"
        )
    return KernelAssets(release=(root / "release").read_text().strip(), vmlinuz=root / "bzImage", modules=root)


def kernel_6_1() -> tuple[str, Path]:
    """Debian bookworm's 6.1 kernel as .ci/kernel-setup extracted it: (release, its config file)."""
    marker = cache_dir() / "release-6.1"
    if not marker.exists():
        raise Unavailable(f"Debian's 6.1 kernel is not in {cache_dir()}: {SETUP_HINT}")
    release = marker.read_text().strip()
    config = cache_dir() / f"linux-{release}" / "boot" / f"config-{release}"
    if not config.exists():
        raise Unavailable(f"{config} missing: {SETUP_HINT}")
    return release, config


def qemu_binary() -> Path:
    """qemu-system-x86_64 on PATH ($P2PDMA_QEMU overrides it)."""
    env = os.environ.get("P2PDMA_QEMU")
    found = env or shutil.which("qemu-system-x86_64")
    if not found or not Path(found).exists():
        raise Unavailable(f"qemu-system-x86_64 not found: {SETUP_HINT}")
    return Path(found)


def qemu_version(binary: Path | None = None) -> tuple[int, int]:
    """(major, minor) of the QEMU binary."""
    out = _run([str(binary or qemu_binary()), "--version"]).stdout
    m = re.search(r"version (\d+)\.(\d+)", out)
    if not m:
        raise Unavailable(f"cannot read the QEMU version from {out!r}")
    return int(m.group(1)), int(m.group(2))


# ---------------------------------------------------------------------------------------------- modules


def _module_name(path: Path) -> str:
    name = path.name
    for suffix in (".xz", ".zst", ".gz"):
        name = name.removesuffix(suffix)
    return name.removesuffix(".ko").replace("-", "_")


def _module_index(modules: Path) -> dict[str, Path]:
    return {_module_name(p): p for p in (modules / "kernel").rglob("*.ko*")}


def _decompress(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".zst"):
        if shutil.which("zstd") is None:
            raise Unavailable(f"zstd not found: cannot decompress {path.name}")
        return subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
    if path.name.endswith(".gz"):
        import gzip

        return gzip.decompress(data)
    return data


def _depends(ko: bytes) -> list[str]:
    """The modinfo `depends=` list of a module image (what modules.dep is built from)."""
    m = re.search(rb"\x00depends=([^\x00]*)\x00", ko) or re.search(rb"^depends=([^\x00]*)\x00", ko)
    if not m or not m.group(1):
        return []
    return [d.decode().replace("-", "_") for d in m.group(1).split(b",") if d]


def _dep_lines(modules: Path) -> dict[str, list[str]]:
    """modules.dep when the tree has one, as {name: [direct deps]}; else {} (deps come from modinfo)."""
    dep = modules / "modules.dep"
    if not dep.exists():
        return {}
    out: dict[str, list[str]] = {}
    for line in dep.read_text().splitlines():
        if ":" not in line:
            continue
        mod, deps = line.split(":", 1)
        out[_module_name(Path(mod))] = [_module_name(Path(d)) for d in deps.split()]
    return out


def resolve_modules(kernel: KernelAssets, names: Sequence[str]) -> list[tuple[str, bytes]]:
    """The modules `names` need, dependencies first, as (name, decompressed .ko), from modules.dep or modinfo."""
    index = _module_index(kernel.modules)
    dep_table = _dep_lines(kernel.modules)
    order: list[tuple[str, bytes]] = []
    seen: set[str] = set()
    images: dict[str, bytes] = {}

    def visit(name: str, stack: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        if name in stack:
            raise Unavailable(f"module dependency cycle: {' -> '.join((*stack, name))}")
        if name not in index:
            raise Unavailable(f"module {name} not found under {kernel.modules} (built in, or missing?)")
        ko = images.setdefault(name, _decompress(index[name]))
        deps = dep_table.get(name) if dep_table else None
        for d in deps if deps is not None else _depends(ko):
            visit(d, (*stack, name))
        seen.add(name)
        order.append((name, ko))

    for n in names:
        visit(n.split()[0], ())
    return order


# ---------------------------------------------------------------------------------------------- initramfs


INIT_HEAD = r"""#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || mount -t tmpfs dev /dev
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mkdir -p /out /tmp
mount -t tmpfs tmpfs /tmp
echo "P2PDMA-INIT: up $(cat /proc/sys/kernel/osrelease)"
"""

INIT_TAIL = r"""
echo "P2PDMA-INIT: script done"
dmesg > /out/dmesg.txt 2>/dev/null
cd /out && tar czf /tmp/out.tar . 2>/dev/null
echo "@BEGIN@"
base64 /tmp/out.tar
echo "@END@"
sync
poweroff -f
""".replace("@BEGIN@", OUT_BEGIN).replace("@END@", OUT_END)


def build_initramfs(
    name: str,
    init: str,
    files: Mapping[str, Path | bytes] | None = None,
    modules: Sequence[str] = (),
    kernel: KernelAssets | None = None,
) -> Path:
    """A busybox-static initramfs whose PID 1 mounts proc/sys/dev/configfs/tracefs, loads `modules` (dependencies
    first; an entry may carry parameters, "nvme_core multipath=N") and runs `init` as a /bin/sh script body.

    `files` maps guest paths to host files or bytes. Whatever the script writes under /out comes back from boot().
    """
    if not BUSYBOX.exists():
        raise Unavailable(f"/bin/busybox not found: {SETUP_HINT}")
    if not _is_static(BUSYBOX):
        raise Unavailable(f"/bin/busybox is not statically linked: {SETUP_HINT}")
    entries: list[tuple[str, int, bytes]] = []
    dirs = {"bin", "sbin", "dev", "proc", "sys", "tmp", "out", "lib", "lib/modules", "etc", "root"}
    for d in sorted(dirs):
        entries.append((d, 0o40755, b""))
    entries.append(("bin/busybox", 0o100755, BUSYBOX.read_bytes()))
    applets = _run([str(BUSYBOX), "--list"]).stdout.split()
    for a in applets:
        if a not in ("busybox",):
            entries.append((f"bin/{a}", 0o120777, b"busybox"))
    entries.append(("dev/console", 0o20600, b""))
    load = []
    if modules:
        if kernel is None:
            raise ValueError("modules need the kernel they belong to")
        params = {m.split()[0].replace("-", "_"): " ".join(m.split()[1:]) for m in modules}
        for mod, ko in resolve_modules(kernel, modules):
            entries.append((f"lib/modules/{mod}.ko", 0o100644, ko))
            load.append(f"insmod /lib/modules/{mod}.ko {params.get(mod, '')} || echo 'P2PDMA-INIT: insmod {mod} failed'"
                        .replace("  ", " "))
    made: set[str] = set(dirs)
    for guest, src in (files or {}).items():
        rel = guest.lstrip("/")
        parts = rel.split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if d not in made:
                made.add(d)
                entries.append((d, 0o40755, b""))
        data = src if isinstance(src, bytes) else Path(src).read_bytes()
        mode = 0o100755 if (not isinstance(src, bytes) and os.access(src, os.X_OK)) else 0o100644
        entries.append((rel, mode, data))
    # configfs is a module in Debian's kernels: mounted once the modules are in.
    mount_cfg = "mount -t configfs configfs /sys/kernel/config 2>/dev/null"
    script = INIT_HEAD + "\n".join(load) + "\n" + mount_cfg + "\n" + init + "\n" + INIT_TAIL
    entries.append(("init", 0o100755, script.encode()))
    data = _cpio_newc(entries)
    return _store(name, data)


def _store(name: str, data: bytes) -> Path:
    """`data` as cache_dir()/initramfs/NAME-<sha256 prefix>.cpio, written once (later runs find it)."""
    out = cache_dir() / "initramfs"
    out.mkdir(exist_ok=True)
    path = out / f"{name}-{hashlib.sha256(data).hexdigest()[:16]}.cpio"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path


def with_files(base: Path, name: str, files: Mapping[str, bytes]) -> Path:
    """`base` followed by a second newc archive holding `files` (guest path -> bytes, mode 0755): the kernel
    unpacks concatenated archives in order, so one cached base image serves every machine."""
    entries = [(guest.lstrip("/"), 0o100755, data) for guest, data in files.items()]
    return _store(name, base.read_bytes() + _cpio_newc(entries))


def _is_static(path: Path) -> bool:
    head = path.read_bytes()[:1 << 16]
    return b"/lib64/ld-linux" not in head and b"/lib/ld-linux" not in head


def _cpio_newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (path, mode, data) entries; dev/console is the char device 5:1."""
    buf = io.BytesIO()
    ino = 1
    for name, mode, data in [*entries, ("TRAILER!!!", 0, b"")]:
        nameb = name.encode() + b"\x00"
        rmaj, rmin = (5, 1) if name == "dev/console" else (0, 0)
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rmaj, rmin, len(nameb), 0)
        buf.write(("070701" + "".join(f"{v:08x}" for v in fields)).encode())
        buf.write(nameb)
        buf.write(b"\x00" * ((4 - (110 + len(nameb)) % 4) % 4))
        buf.write(data)
        buf.write(b"\x00" * ((4 - len(data) % 4) % 4))
        ino += 1
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- boot


@dataclass
class BootResult:
    """What one boot gave: the serial console text, the files under the guest's /out, and the wall time."""

    console: str
    outputs: dict[str, bytes] = field(default_factory=dict)
    seconds: float = 0.0
    archive: bytes = b""

    def extract(self, dest: Path) -> Path:
        """Unpack the guest's /out (links kept as links, nothing outside `dest`) and return `dest`."""
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(self.archive)) as tar:
            tar.extractall(dest, filter="data")
        return dest


def boot(
    kernel: KernelAssets,
    initramfs: Path,
    qemu_args: Sequence[str],
    append: str = "",
    timeout: float = 300.0,
) -> BootResult:
    """Boot `kernel` with `initramfs` under QEMU (-nographic, serial console captured, -no-reboot) and return the
    console and the guest's /out files (the init prints them as a base64 tar between markers, then powers off)."""
    qemu = qemu_binary()
    # TCG only: /dev/kvm exists on the CI machines but nested KVM fails there (a KVM probe once picked it and
    # the guest hung), and TCG gives the same PCI topology, config space and kernel decisions.
    accel = ["-accel", "tcg"]
    args = list(qemu_args)
    cmdline = f"console=ttyS0 panic=-1 quiet loglevel=4 {append}".strip()
    cmd = [
        str(qemu), *accel, "-m", "1024", "-smp", "1", "-nographic", "-no-reboot", "-nodefaults",
        "-serial", "stdio", "-monitor", "none",
        "-kernel", str(kernel.vmlinuz), "-initrd", str(initramfs), "-append", cmdline, *args,
    ]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)
        console = proc.stdout.decode(errors="replace")
        err = proc.stderr.decode(errors="replace")
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else str(e.stdout or "")
        raise AssertionError(f"guest did not power off within {timeout:.0f} s; console tail:\n{out[-3000:]}") from e
    seconds = time.monotonic() - start
    if proc.returncode != 0 and OUT_END not in console:
        raise AssertionError(f"qemu exited {proc.returncode}: {err.strip()[-2000:]}\nconsole tail:\n{console[-3000:]}")
    outputs: dict[str, bytes] = {}
    if OUT_BEGIN in console and OUT_END in console:
        blob = console.split(OUT_BEGIN, 1)[1].split(OUT_END, 1)[0]
        raw = base64.b64decode("".join(blob.split()))
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            for m in tar.getmembers():
                if m.isfile():
                    f = tar.extractfile(m)
                    if f is not None:
                        outputs[m.name.removeprefix("./")] = f.read()
        console = console.split(OUT_BEGIN, 1)[0] + console.split(OUT_END, 1)[1]
        archive = raw
    else:
        raise AssertionError(f"guest wrote no /out archive; console tail:\n{console[-3000:]}\nqemu: {err[-1000:]}")
    return BootResult(console=console, outputs=outputs, seconds=seconds, archive=archive)
