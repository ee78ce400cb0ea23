"""Capture archives: this machine's live /sys round-trips to the same matrix, generated and real
trees round-trip, the standalone script needs only the standard library, and every hostile archive
is refused with one line before anything is written."""

from __future__ import annotations

import ast
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import p2pdma.sources.archive as archmod
import p2pdma.sources.capture as capmod
from p2pdma.cli import main, matrix_document
from p2pdma.errors import SourceError
from p2pdma.sources.capture import MANIFEST, capture, load_capture
from p2pdma.sources.spec import parse_spec
from p2pdma.sources.sysfs import read_root, write_root
from tests.helpers import dev, hb, machine

CAPTURE_PY = Path(capmod.__file__)


def _tree(tmp: Path, spec: dict[str, Any] | None = None) -> Path:
    spec = spec or machine([hb("pci0000:00", [
        {"bdf": "0000:00:00.0", "id": "8086:2020", "class": 0x060000},
        dev("0000:00:01.0", "8086:352a", port="root-port", port_number=1, link=[16.0, 16],
            acs={"cap": 0x7F, "ctrl": 0x1D}, children=[
                dev("0000:01:00.0", "10b5:8796", port="switch-upstream", children=[
                    dev("0000:02:00.0", "10b5:8796", port="switch-downstream", port_number=1, children=[
                        dev("0000:03:00.0", bars=[{"size": "16M", "prefetch": True, "bits": 64}],
                            vfs={"count": 2, "id": "10de:2330", "first_bdf": "0000:03:00.1"}),
                    ]),
                    dev("0000:02:01.0", "10b5:8796", port="switch-downstream", port_number=2,
                        acs={"cap": 0x7F, "ctrl": 0x0C}, children=[dev("0000:04:00.0")]),
                ]),
            ]),
    ])])
    m = parse_spec(spec)
    root = tmp / "src-root"
    write_root(root, m.raws, cpu=m.cpu, kernel_release="6.18.0-test")
    return root


def _same_verdicts(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["devices"] == b["devices"]
    assert a["pairs"] == b["pairs"]


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """tempfile's directory redirected to an empty folder, and a fresh empty working directory: a
    test asserts both are empty afterwards (nothing written outside the private temp dir)."""
    tdir = tmp_path / "tempdir"
    tdir.mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tdir))
    monkeypatch.chdir(cwd)
    yield tdir
    assert os.listdir(tdir) == [], "the private temp dir was not removed"
    assert os.listdir(cwd) == [], "something was written in the working directory"


def test_live_sys_capture_gives_the_live_matrix(tmp_path: Path, private_tmp: Path) -> None:
    if not Path("/sys/bus/pci/devices").is_dir():
        pytest.skip("this machine has no /sys/bus/pci")
    out = tmp_path / "live.tar.gz"
    manifest = capture(str(out), "/")
    assert manifest["live"] is True and manifest["functions"] == len(os.listdir("/sys/bus/pci/devices"))
    live = read_root("/")
    loaded = load_capture(out)
    for profile in ("latest", "classic"):
        _same_verdicts(matrix_document(live, profile, True), matrix_document(loaded, profile, True))
    assert loaded.kernel_release == live.kernel_release and loaded.cpu == live.cpu
    assert loaded.source == f"capture:{out}"
    # what a non-root capture could not read is stated, and only then
    if os.geteuid() != 0 and manifest["truncated"]:
        assert any("cut short" in w for w in loaded.warnings)


def test_generated_tree_round_trips_and_keeps_links(tmp_path: Path, private_tmp: Path) -> None:
    root = _tree(tmp_path)
    out = tmp_path / "m.tar.gz"
    manifest = capture(str(out), str(root))
    assert manifest["functions"] == len(os.listdir(root / "sys/bus/pci/devices"))
    direct = read_root(root, name="m")
    loaded = load_capture(out)
    assert loaded.name == "m"
    _same_verdicts(matrix_document(direct, "latest", True), matrix_document(loaded, "latest", True))
    assert loaded["0000:03:00.2"].physfn == "0000:03:00.0"
    with tarfile.open(out) as tf:
        members = {m.name: m for m in tf.getmembers()}
    links = [m for m in members.values() if m.issym()]
    assert links and all(not m.linkname.startswith("/") for m in links)
    assert members["sys/bus/pci/devices/0000:04:00.0"].issym()
    assert {"proc/cpuinfo", "proc/sys/kernel/osrelease", MANIFEST} <= set(members)
    # every link read_root looks at is in the archive, as a link with the same target
    source_links = {
        str(p.relative_to(root)): os.readlink(p)
        for p in (root / "sys").rglob("*") if p.is_symlink() and p.name in capmod.DEVICE_LINKS
    }
    assert source_links and all(members[k].issym() and members[k].linkname == v for k, v in source_links.items())
    # only what the verdict reads: no file outside the known set
    known = set(capmod.DEVICE_FILES) | set(capmod.DEVICE_LINKS)
    for name, m in members.items():
        if m.isfile() and name.startswith("sys/devices/"):
            assert name.rsplit("/", 1)[1] in known, name


def test_capture_of_real_trees_equals_reading_them(real_roots: dict[str, Path], tmp_path: Path) -> None:
    for stem, root in real_roots.items():
        out = tmp_path / f"{stem}.tar.gz"
        if not (root / "sys/bus/pci/devices").is_dir() and not any((root / "sys/devices").glob("pci*")):
            with pytest.raises(capmod.CaptureError, match="cannot list PCI devices"):
                capture(str(out), str(root))
            assert not out.exists()
            continue
        capture(str(out), str(root))
        loaded = load_capture(out, name="x")
        _same_verdicts(matrix_document(read_root(root, name="x"), "latest", True),
                       matrix_document(loaded, "latest", True))


def test_hwloc_gather_tarball_loads_directly(shared_hwloc: Path, real_roots: dict[str, Path]) -> None:
    tb = shared_hwloc / "40intel64-2g2n4c+pcilocality.tar.bz2"
    loaded = load_capture(tb)
    direct = read_root(real_roots["40intel64-2g2n4c+pcilocality"], name=loaded.name)
    _same_verdicts(matrix_document(direct, "latest"), matrix_document(loaded, "latest"))


def test_manifest_config_sizes_tell_absent_acs_from_unreadable(tmp_path: Path, private_tmp: Path) -> None:
    # A root port whose kernel cfg_size is 256: no extended space, so no ACS, and that is certain
    # only when the capture says the kernel's config file was 256 bytes.
    spec = machine([hb("pci0000:00", [
        {"bdf": "0000:00:00.0", "id": "8086:2020", "class": 0x060000},
        dev("0000:00:01.0", "8086:352a", port="root-port", config_size=256, children=[dev("0000:01:00.0")]),
    ])])
    root = _tree(tmp_path, spec)
    out = tmp_path / "c.tar.gz"
    capture(str(out), str(root))
    assert not load_capture(out)["0000:00:01.0"].acs_known  # a copied tree: sizes say nothing
    live = _rewrite(out, tmp_path / "live.tar.gz", manifest={"live": True})
    assert load_capture(live)["0000:00:01.0"].acs_known


def _rewrite(src: Path, dst: Path, manifest: dict[str, Any]) -> Path:
    """Copy a capture with its manifest fields updated."""
    with tarfile.open(src) as tf, tarfile.open(dst, "w:gz") as out:
        for m in tf.getmembers():
            data = tf.extractfile(m).read() if m.isfile() else None  # type: ignore[union-attr]
            if m.name == MANIFEST and data is not None:
                doc = json.loads(data)
                doc.update(manifest)
                data = json.dumps(doc).encode()
                m.size = len(data)
            out.addfile(m, io.BytesIO(data) if data is not None else None)
    return dst


def test_standalone_script_needs_only_the_standard_library(tmp_path: Path) -> None:
    # Python 3.7 grammar, no import of p2pdma or numpy at module level, runs isolated (-I -S: no
    # site-packages, so neither p2pdma nor numpy could be imported).
    tree = ast.parse(CAPTURE_PY.read_text(), feature_version=(3, 7))
    top_imports = {
        (n.module or "") if isinstance(n, ast.ImportFrom) else a.name
        for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)
        for a in n.names
    }
    assert not any(m.startswith(("p2pdma", "numpy", "yaml")) for m in top_imports)
    root = _tree(tmp_path)
    out = tmp_path / "standalone.tar.gz"
    proc = subprocess.run([sys.executable, "-I", "-S", str(CAPTURE_PY), str(out), "--root", str(root)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "captured" in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["src-root", "standalone.tar.gz"]  # wrote only OUT
    _same_verdicts(matrix_document(read_root(root, name="standalone"), "latest"),
                   matrix_document(load_capture(out), "latest"))
    bad = subprocess.run([sys.executable, "-I", "-S", str(CAPTURE_PY), str(tmp_path / "x.tar.gz"),
                          "--root", str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.tar.gz").exists()


def test_capture_skips_links_out_of_the_root_and_says_so(tmp_path: Path, private_tmp: Path) -> None:
    root = _tree(tmp_path)
    devdir = root / "sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0"
    os.symlink("../../../../../../../../etc", devdir / "driver")
    out = tmp_path / "o.tar.gz"
    manifest = capture(str(out), str(root))
    assert any(s["path"].endswith("0000:01:00.0/driver") for s in manifest["skipped_links"])
    with tarfile.open(out) as tf:
        assert not any(m.name.endswith("0000:01:00.0/driver") for m in tf.getmembers())
    assert load_capture(out)["0000:01:00.0"].driver is None


def test_capture_bounds(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    out = tmp_path / "big.tar.gz"
    with pytest.raises(capmod.CaptureError, match="exceed"):
        capture(str(out), str(root), max_bytes=10_000)
    with pytest.raises(capmod.CaptureError, match="more than the capture bound"):
        capture(str(out), str(root), max_functions=2)
    assert not out.exists()


def test_cli_capture_and_root_archive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _tree(tmp_path)
    out = tmp_path / "cli.tgz"
    assert main(["capture", str(out), "--source-root", str(root)]) == 0
    assert "captured" in capsys.readouterr().err
    assert main(["matrix", "--root", str(out), "--json", "--schema", "1"]) == 0
    from_archive = json.loads(capsys.readouterr().out)
    assert main(["matrix", "--root", str(root), "--json", "--schema", "1"]) == 0
    from_dir = json.loads(capsys.readouterr().out)
    _same_verdicts(from_archive, from_dir)
    assert from_archive["machine"] == "cli"
    (tmp_path / "evil.tar").write_bytes(_archive([("../evil", b"x")]))
    assert main(["topo", "--root", str(tmp_path / "evil.tar")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "refused" in err and "'..'" in err


# --- hostile archives ----------------------------------------------------------------------


def _archive(entries: list[tuple[str, bytes | tarfile.TarInfo]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """A plain tar from (name, data) files and prepared TarInfo members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, item in entries:
            if isinstance(item, tarfile.TarInfo):
                tf.addfile(item)
            else:
                ti = tarfile.TarInfo(name)
                ti.size = len(item)
                tf.addfile(ti, io.BytesIO(item))
    return buf.getvalue()


def _member(name: str, kind: bytes, linkname: str = "", size: int = 0) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = linkname
    ti.size = size
    return ti


def _with_pci(extra: list[tuple[str, bytes | tarfile.TarInfo]]) -> bytes:
    """A tiny valid sysfs tree plus the hostile ``extra`` members at the end."""
    return _archive([
        ("sys/devices/pci0000:00/0000:00:01.0/vendor", b"0x10de\n"),
        ("sys/bus/pci/devices/0000:00:01.0",
         _member("sys/bus/pci/devices/0000:00:01.0", tarfile.SYMTYPE, "../../../devices/pci0000:00/0000:00:01.0")),
        ("proc/cpuinfo", b"vendor_id\t: GenuineIntel\n"),
        *extra,
    ])


HOSTILE: dict[str, tuple[list[tuple[str, bytes | tarfile.TarInfo]], str]] = {
    "absolute path": ([("/tmp/p2pdma-evil", b"x")], "absolute"),
    "dot-dot": ([("sys/../../evil", b"x")], "'..'"),
    "symlink to /etc": ([("sys/etc", _member("sys/etc", tarfile.SYMTYPE, "/etc"))], "outside the root"),
    "symlink via ../../..": (
        [("sys/devices/up", _member("sys/devices/up", tarfile.SYMTYPE, "../../../../etc"))], "outside the root"),
    "symlink chain out": ([
        ("sys/a", _member("sys/a", tarfile.SYMTYPE, ".")),
        ("sys/b", _member("sys/b", tarfile.SYMTYPE, "a/../..")),
    ], "outside the root"),
    "file below a symlink": ([
        ("sys/l", _member("sys/l", tarfile.SYMTYPE, "devices")),
        ("sys/l/x", b"x"),
    ], "not a directory"),
    "hardlink out": ([("sys/h", _member("sys/h", tarfile.LNKTYPE, "../../etc/passwd"))], "hard link"),
    "char device": ([("sys/null", _member("sys/null", tarfile.CHRTYPE))], "device file"),
    "block device": ([("sys/sda", _member("sys/sda", tarfile.BLKTYPE))], "device file"),
    "fifo": ([("sys/fifo", _member("sys/fifo", tarfile.FIFOTYPE))], "FIFO"),
    "huge member": ([("sys/huge", _member("sys/huge", tarfile.REGTYPE, size=1 << 40))], "declares"),
    "duplicate": ([("proc/cpuinfo", b"again")], "twice"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_refused(case: str, tmp_path: Path, private_tmp: Path) -> None:
    entries, why = HOSTILE[case]
    path = tmp_path / "hostile.tar"
    path.write_bytes(_with_pci(entries))
    sentinel = tmp_path.parent / "p2pdma-evil"
    with pytest.raises(SourceError) as exc:
        load_capture(path)
    msg = str(exc.value)
    assert "\n" not in msg and "refused" in msg and why in msg, msg
    assert not Path("/tmp/p2pdma-evil").exists() and not sentinel.exists()


def test_too_many_members_is_refused(tmp_path: Path, private_tmp: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for i in range(100_000):
            tf.addfile(tarfile.TarInfo(f"f{i}"))
    path = tmp_path / "many.tar"
    path.write_bytes(buf.getvalue())
    with pytest.raises(SourceError, match=f"more than {archmod.MAX_MEMBERS} members"):
        load_capture(path)


def test_total_size_and_stream_caps(tmp_path: Path, private_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archmod, "MAX_TOTAL_SIZE", 1000)
    path = tmp_path / "total.tar"
    path.write_bytes(_with_pci([(f"sys/f{i}", b"x" * 400) for i in range(4)]))
    with pytest.raises(SourceError, match="total more than 1000 bytes"):
        load_capture(path)
    # a compression bomb: refused on the decompressed size, not the file's
    monkeypatch.setattr(archmod, "MAX_TOTAL_SIZE", 64 << 20)
    monkeypatch.setattr(archmod, "MAX_STREAM", 64 << 10)
    bomb = tmp_path / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz") as tf:
        ti = tarfile.TarInfo("sys/zeros")
        ti.size = 1 << 20
        tf.addfile(ti, io.BytesIO(bytes(ti.size)))
    assert bomb.stat().st_size < 64 << 10
    with pytest.raises(SourceError, match="expands past"):
        load_capture(bomb)


@pytest.mark.parametrize("blob", [b"", b"not a tar at all" * 100, b"\x1f\x8b\x08\x00garbage", b"BZh9garbage"])
def test_corrupt_archives_fail_with_one_line(blob: bytes, tmp_path: Path, private_tmp: Path) -> None:
    path = tmp_path / "corrupt.tar.gz"
    path.write_bytes(blob)
    with pytest.raises(SourceError) as exc:
        load_capture(path)
    assert "\n" not in str(exc.value) and "refused" in str(exc.value)


def test_archive_without_a_sys_tree_or_with_bad_manifest(tmp_path: Path, private_tmp: Path) -> None:
    path = tmp_path / "nosys.tar"
    path.write_bytes(_archive([("etc/hosts", b"x")]))
    with pytest.raises(SourceError, match="no sys/ tree"):
        load_capture(path)
    bad = tmp_path / "badmanifest.tar"
    bad.write_bytes(_with_pci([(MANIFEST, b"{not json")]))
    with pytest.raises(SourceError, match="manifest"):
        load_capture(bad)
