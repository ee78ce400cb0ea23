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
