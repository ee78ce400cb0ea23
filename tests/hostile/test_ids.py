"""pci.ids: looked up per vendor, never parsed whole; a huge or special file is ignored."""

from __future__ import annotations

import os
import time
from pathlib import Path

from p2pdma.pci import ids as I

SAMPLE = """# comment
10de  NVIDIA Corporation
\t2330  GH100 [H100 SXM5 80GB]
\t\t10de 16c1  subsystem
15b3  Mellanox Technologies
\t101e  ConnectX Family mlx5Gen Virtual Function
8086  Intel Corporation
\t347a  Ice Lake Xeon PCI Express Root Port A
C 03  Display controller
\t02  3D controller
C 06  Bridge
\t04  PCI bridge
"""


def write_ids(root: Path, text: str) -> None:
    p = root / "usr/share/hwdata"
    p.mkdir(parents=True)
    (p / "pci.ids").write_text(text)


def test_only_the_vendors_asked_for_are_parsed(tmp_path: Path) -> None:
    I._file_bytes.cache_clear()
    write_ids(tmp_path, SAMPLE)
    ids = I.PciIds.find(tmp_path)
    assert ids.vendors == {} and ids.devices == {}
    assert ids.names(0x10DE, 0x2330) == ("NVIDIA Corporation", "GH100 [H100 SXM5 80GB]")
    assert set(ids.vendors) == {0x10DE}  # Mellanox and Intel not parsed
    assert ids.names(0x15B3, 0x101E)[1] == "ConnectX Family mlx5Gen Virtual Function"
    assert ids.names(0x1234, 1) == (None, None)
    assert ids.class_name(0x030200) == "3D controller" and ids.class_name(0x060400) == "PCI bridge"
    assert ids.names(0x8086, 0x347A)[1] == "Ice Lake Xeon PCI Express Root Port A"


def test_a_sparse_2gib_pci_ids_is_not_read(tmp_path: Path) -> None:
    I._file_bytes.cache_clear()
    p = tmp_path / "usr/share/hwdata"
    p.mkdir(parents=True)
    with open(p / "pci.ids", "wb") as f:
        f.truncate(2 << 30)
    t0 = time.perf_counter()
    ids = I.PciIds.find(tmp_path)
    # not the 2 GiB file: this host's own pci.ids when it has one, else the built-in table
    assert ids.source != str(p / "pci.ids")
    assert ids.names(0x10DE, 0x2330)[0] in ("NVIDIA", "NVIDIA Corporation")
    assert time.perf_counter() - t0 < 0.5


def test_a_fifo_pci_ids_is_ignored(tmp_path: Path) -> None:
    p = tmp_path / "usr/share/hwdata"
    p.mkdir(parents=True)
    os.mkfifo(p / "pci.ids")
    ids = I.PciIds.find(tmp_path)
    assert ids.source != str(p / "pci.ids")  # this host's pci.ids or the built-ins, never the FIFO
    assert ids.names(0x15B3, 1)[0] in ("Mellanox", "Mellanox Technologies")


def _every_class_code(ids: I.PciIds) -> list[int]:
    return sorted({(k << 16) if k < 256 else (k << 8) for k in ids.classes} | {0x000000, 0x000100, 0xFF0000, 0x0B4000})


def _classes_as_full_parse(path: Path) -> None:
    """class_name() with one class block parsed at a time equals the old whole-section parse."""
    I._file_bytes.cache_clear()
    full = I.PciIds(source=str(path))
    full._load_classes()
    codes = _every_class_code(full)
    lazy = I.PciIds(source=str(path))
    got = [lazy.class_name(c) for c in codes]
    want = [full.class_name(c) for c in codes]
    assert got == want
    assert -1 not in lazy.looked or any(c >> 16 == 0 for c in codes)


def test_class_blocks_are_looked_up_alone(tmp_path: Path) -> None:
    write_ids(tmp_path, SAMPLE + "C 00  Unclassified device\n\t01  VGA compatible unclassified device\n")
    path = tmp_path / "usr/share/hwdata/pci.ids"
    _classes_as_full_parse(path)
    I._file_bytes.cache_clear()
    ids = I.PciIds(source=str(path))
    assert ids.class_name(0x030200) == "3D controller"
    assert set(ids.classes) == {0x03, 0x0302}  # only the display block was parsed
    assert ids.class_name(0x120000) == "Processing accelerators"  # not in the file: the built-in


def test_class_blocks_on_the_installed_pci_ids() -> None:
    for p in I.PCI_IDS_PATHS:
        path = Path("/") / p
        if path.is_file():
            _classes_as_full_parse(path)
            return
    import pytest

    pytest.skip("no pci.ids installed")
