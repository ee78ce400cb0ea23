"""Boot Debian's kernels in QEMU on emulated PCIe machines and collect what the guest wrote.

The shared harness of the kernel conformance tests (tests/kernel/): it fetches Debian's kernel packages with apt
into a cache directory of its own, builds small busybox initramfs images, boots them under TCG (KVM only when it
really works) and returns the serial console and every file the guest left under /out.
"""

from __future__ import annotations

import base64
import io
import lzma
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

RELEASE_7_2 = "7.2.13+deb14-amd64"
DEB_VERSION_7_2 = "7.2.13-1"
SID_SOURCES = """Types: deb
URIs: http://deb.debian.org/debian
Suites: sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
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


def _apt_options(base: Path) -> list[str]:
    """apt options for a private sid source list under `base`; the system's sources are never touched."""
    parts = base / "apt-sid" / "parts"
    lists = base / "apt-sid" / "lists"
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    parts.mkdir(parents=True, exist_ok=True)
    src = parts / "sid.sources"
    if not src.exists():
        src.write_text(SID_SOURCES)
    return [
        "-o", "Dir::Etc::SourceList=/dev/null",
        "-o", f"Dir::Etc::SourceParts={parts}",
        "-o", f"Dir::State::Lists={lists}",
        "-o", "Dir::Cache=" + str(base / "apt-sid" / "cache"),
        "-o", "Debug::NoLocking=1",
    ]


def _apt_download(packages: Sequence[str], dest: Path) -> None:
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise Unavailable("apt-get/dpkg-deb not found: cannot fetch Debian kernel packages")
    base = cache_dir()
    opts = _apt_options(base)
    dest.mkdir(parents=True, exist_ok=True)
    lists = base / "apt-sid" / "lists"
    if not any(lists.glob("*Packages*")):
        r = _run(["apt-get", *opts, "update"], timeout=600)
        if not any(lists.glob("*Packages*")):
            raise Unavailable(f"apt-get update for Debian sid failed (network?): {r.stderr.strip()[-300:]}")
    r = _run(["apt-get", *opts, "download", *packages], cwd=dest, timeout=900)
    if r.returncode != 0:
        # The lists may be stale (the version left sid): refresh once and retry.
        _run(["apt-get", *opts, "update"], timeout=600)
        r = _run(["apt-get", *opts, "download", *packages], cwd=dest, timeout=900)
    if r.returncode != 0:
        raise Unavailable(f"apt-get download {' '.join(packages)} failed: {r.stderr.strip()[-300:]}")


def kernel_7_2() -> KernelAssets:
    """Debian unstable's Linux 7.2.13 (CONFIG_PCI_P2PDMA=y), fetched and extracted once into cache_dir().

    linux-image-7.2.13+deb14-amd64 is a 1.9 KB meta package: the bzImage is in linux-binary-<release> (signed
    source package) and the modules in linux-modules-<release>; those two are what is fetched.
    """
    base = cache_dir()
    root = base / f"linux-{RELEASE_7_2}"
    vmlinuz = root / "usr" / "lib" / "modules" / RELEASE_7_2 / "vmlinuz"
    modules = root / "usr" / "lib" / "modules" / RELEASE_7_2
    done = root / ".extracted"
    if not done.exists():
        debs = base / "debs"
        names = [f"linux-binary-{RELEASE_7_2}", f"linux-modules-{RELEASE_7_2}"]
        wanted = [debs / f"{n}_{DEB_VERSION_7_2}_amd64.deb" for n in names]
        missing = [n for n, w in zip(names, wanted, strict=True) if not w.exists()]
        if missing:
            _apt_download([f"{n}={DEB_VERSION_7_2}" for n in missing], debs)
        tmp = Path(tempfile.mkdtemp(dir=base, prefix="extract-"))
        for deb in wanted:
            r = _run(["dpkg-deb", "-x", str(deb), str(tmp)])
            if r.returncode != 0:
                raise Unavailable(f"dpkg-deb -x {deb.name} failed: {r.stderr.strip()}")
        if root.exists():
            shutil.rmtree(root)
        tmp.rename(root)
        done.write_text(DEB_VERSION_7_2 + "\n")
    if not vmlinuz.exists():
        raise Unavailable(f"{vmlinuz} missing after extracting the Debian packages")
    return KernelAssets(release=RELEASE_7_2, vmlinuz=vmlinuz, modules=modules)


def qemu_binary() -> Path:
    """qemu-system-x86_64 on PATH ($P2PDMA_QEMU overrides it)."""
    env = os.environ.get("P2PDMA_QEMU")
    found = env or shutil.which("qemu-system-x86_64")
    if not found or not Path(found).exists():
        raise Unavailable("qemu-system-x86_64 not found (apt-get install qemu-system-x86)")
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
mount -t configfs configfs /sys/kernel/config 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mkdir -p /out /tmp
mount -t tmpfs tmpfs /tmp
echo "P2PDMA-INIT: up $(cat /proc/sys/kernel/osrelease)"
"""

INIT_TAIL = r"""
echo "P2PDMA-INIT: script done"
mount -t configfs configfs /sys/kernel/config 2>/dev/null
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
        raise Unavailable("/bin/busybox not found (apt-get install busybox-static)")
    if not _is_static(BUSYBOX):
        raise Unavailable("/bin/busybox is not statically linked (apt-get install busybox-static)")
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
    script = INIT_HEAD + "\n".join(load) + "\n" + init + "\n" + INIT_TAIL
    entries.append(("init", 0o100755, script.encode()))
    data = _cpio_newc(entries)
    out = cache_dir() / "initramfs"
    out.mkdir(exist_ok=True)
    path = out / f"{name}.cpio"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


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


_KVM_OK: bool | None = None


def kvm_works() -> bool:
    """True when /dev/kvm really runs a guest (nested KVM often opens but fails); $P2PDMA_KVM=0 turns it off."""
    global _KVM_OK
    if os.environ.get("P2PDMA_KVM") == "0":
        return False
    if _KVM_OK is None:
        _KVM_OK = False
        if os.access("/dev/kvm", os.R_OK | os.W_OK):
            try:
                r = subprocess.run(
                    [str(qemu_binary()), "-accel", "kvm", "-M", "none", "-nographic", "-S", "-monitor", "none",
                     "-display", "none", "-serial", "none"],
                    capture_output=True, text=True, timeout=5, check=False,
                )
                _KVM_OK = "failed" not in r.stderr.lower() and "error" not in r.stderr.lower()
            except subprocess.TimeoutExpired:
                _KVM_OK = True  # it started and waited (-S): KVM initialised
            except OSError:
                _KVM_OK = False
    return _KVM_OK


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
    accel = ["-accel", "kvm", "-cpu", "host"] if kvm_works() else ["-accel", "tcg"]
    args = list(qemu_args)
    if "-cpu" in args and accel[-2:] == ["-cpu", "host"]:
        accel = accel[:2]
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
    else:
        raise AssertionError(f"guest wrote no /out archive; console tail:\n{console[-3000:]}\nqemu: {err[-1000:]}")
    return BootResult(console=console, outputs=outputs, seconds=seconds)
