"""The guest side of the P2P conformance boots: busybox shell that captures the PCI facts p2pdma reads and asks the
running kernel for its P2P verdict, and the host-side parsing of what it wrote under /out.

How the kernel is asked (no module of our own): nvmet, the NVMe-oF target, is the in-kernel client of
pci_p2pdma_distance(). A target namespace whose configfs ``p2pmem`` attribute names a provider BDF runs, when
enabled, ``nvmet_p2pmem_ns_enable()`` (drivers/nvme/target/core.c, 7.2) -> ``pci_p2pdma_distance(provider,
nvmet_ns_dev(ns), true)`` -> ``pci_p2pdma_distance_many()`` -> ``calc_map_type_and_dist(provider, client, &dist,
verbose=true)`` (drivers/pci/p2pdma.c, 7.2), where the client is the NVMe controller behind the namespace's block
device. A kretprobe on ``calc_map_type_and_dist`` (its own symbol in Debian's 7.2.13) records the map type and, with
``$arg3`` at return (kernels >= 6.10), the distance it wrote; one on ``pci_p2pdma_distance_many`` its total
(-1 when refused), which is all a 6.1 kernel shows of the distance. The verbose warnings land in dmesg; enable
fails with EINVAL when the kernel says NOT_SUPPORTED. The provider must publish p2pmem: a QEMU NVMe with a CMB
(``cmb_size_mb``), which the nvme driver registers with pci_p2pdma_add_resource() and publishes (WDS and RDS set).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Every PCI function's files and links that sources.sysfs.read_root() reads, copied under /out/root with the
# same layout (links kept as links, relative as the kernel made them); plus cpuinfo, osrelease, IOMMU facts.
CAPTURE = r"""
capture() {
  CAP=$1; R=/out/$1
  mkdir -p $R/sys/bus/pci/devices $R/proc/sys/kernel $R/sys/class/iommu $R/sys/kernel/iommu_groups
  cat /proc/cpuinfo > $R/proc/cpuinfo
  cat /proc/sys/kernel/osrelease > $R/proc/sys/kernel/osrelease
  sizes=""
  for d in $(find /sys/devices/pci* -type d -name '????:??:??.?'); do
    mkdir -p $R$d
    sizes="$sizes, \"$(basename $d)\": $(stat -c %s $d/config)"
    for f in config vendor device class resource numa_node local_cpulist max_link_speed max_link_width \
             current_link_speed current_link_width; do
      [ -r $d/$f ] && cat $d/$f > $R$d/$f 2>/dev/null
    done
    for l in iommu_group driver physfn; do
      [ -L $d/$l ] && ln -s "$(readlink $d/$l)" $R$d/$l
    done
    if [ -d $d/p2pmem ]; then
      mkdir -p $R$d/p2pmem
      for f in size available published; do cat $d/p2pmem/$f > $R$d/p2pmem/$f 2>/dev/null; done
    fi
    if [ -d $d/nvme ]; then
      for c in $d/nvme/*; do
        mkdir -p $R$c
        for n in $c/nvme*n*; do [ -d $n ] && mkdir -p $R$n; done
      done
    fi
  done
  for l in /sys/bus/pci/devices/*; do ln -s "$(readlink $l)" $R$l; done
  for u in /sys/class/iommu/*; do [ -e $u ] && mkdir -p $R$u; done
  for g in /sys/kernel/iommu_groups/*; do
    [ -d $g ] && mkdir -p $R$g && cat $g/type > $R$g/type 2>/dev/null
  done
  # The manifest of `p2pdma capture` (schema p2pdma.capture/2): a live capture as root, so the kernel's
  # cfg_size per function (the config files' sizes) tells an absent ACS capability from an unread one.
  printf '{"schema": "p2pdma.capture/2", "capture_version": 2, "hostname": "qemu-%s", "source_root": "/",
 "live": true, "euid": 0, "config_sizes": {%s}}\n' "$CAP" "${sizes#, }" > $R/p2pdma-capture.json
}
"""

# Helpers: the BDF of the NVMe controller with a serial, its first namespace, and ACS control writes through the
# sysfs config file (what `setpci ECAP_ACS+6.w=` does; busybox has no setpci).
HELPERS = r"""
bdf_of() {
  for c in /sys/class/nvme/*; do
    [ "$(cat $c/serial | tr -d ' ')" = "$1" ] && basename $(readlink $c/device)
  done
}
ns_of() {
  for c in /sys/class/nvme/*; do
    [ "$(basename $(readlink $c/device))" = "$1" ] || continue
    for n in $c/nvme*n*; do [ -d $n ] && basename $n && return; done
  done
}
acs_off() {
  cfg=/sys/bus/pci/devices/$1/config; off=256
  while [ $off -ne 0 ]; do
    hdr=$(od -An -tu4 -j $off -N4 $cfg | tr -d ' ')
    [ -z "$hdr" ] && return
    [ $((hdr & 0xffff)) -eq 13 ] && { echo $off; return; }
    off=$(( (hdr >> 20) & 0xffc ))
  done
}
setacs() {
  b=$1; [ -e /sys/bus/pci/devices/$b ] || b=$(bdf_of $1)
  off=$(acs_off $b)
  if [ -z "$off" ]; then echo "P2PDMA-INIT: $b has no ACS capability"; return 1; fi
  printf "\\$(printf %o $(( $2 & 0xff )))\\$(printf %o $(( ($2 >> 8) & 0xff )))" | \
    dd of=/sys/bus/pci/devices/$b/config bs=1 seek=$((off + 6)) count=2 conv=notrunc 2>/dev/null
  now=$(od -An -tx2 -j $((off + 6)) -N2 /sys/bus/pci/devices/$b/config)
  echo "P2PDMA-INIT: ACS ctrl of $b at $((off + 6)) set to $2, reads $now"
}
parent_of() { basename $(dirname $(readlink -f /sys/bus/pci/devices/$1)); }
"""

# One probe: provider (serial or BDF) -> client (serial or BDF of an NVMe with a namespace). Writes /out/pair-N.*.
PROBE = r"""
T=/sys/kernel/tracing
echo 'r:p2pmap calc_map_type_and_dist map=$retval:s32 dist=+0($arg3):s32' >> $T/kprobe_events 2>/dev/null || \
  echo 'r:p2pmap calc_map_type_and_dist map=$retval:s32' >> $T/kprobe_events
echo 'r:p2pdist pci_p2pdma_distance_many dist=$retval:s32' >> $T/kprobe_events
echo 1 > $T/events/kprobes/p2pmap/enable
echo 1 > $T/events/kprobes/p2pdist/enable
N=0
probe() {
  N=$((N + 1))
  P=$1; [ -e /sys/bus/pci/devices/$P ] || P=$(bdf_of $1)
  C=$2; [ -e /sys/bus/pci/devices/$C ] || C=$(bdf_of $2)
  NS=$(ns_of $C)
  S=/sys/kernel/config/nvmet/subsystems/p2p$N
  mkdir $S && echo 1 > $S/attr_allow_any_host && mkdir $S/namespaces/1
  echo -n /dev/$NS > $S/namespaces/1/device_path
  echo > $T/trace
  dmesg -c > /dev/null
  echo -n $P > $S/namespaces/1/p2pmem; prc=$?
  echo 1 > $S/namespaces/1/enable; erc=$?
  dmesg -c > /out/pair-$N.dmesg
  cat $T/trace > /out/pair-$N.trace
  echo "$N $CAP $P $C $NS $prc $erc" >> /out/pairs.txt
  echo 0 > $S/namespaces/1/enable 2>/dev/null
  rmdir $S/namespaces/1 $S
}
"""


@dataclass(frozen=True)
class KernelAnswer:
    """What the running kernel said for one (provider, client) pair."""

    capture: str  # the /out folder holding the sysfs facts in force when the kernel was asked
    provider: str
    client: str
    namespace: str
    p2pmem_rc: int
    enable_rc: int
    map_types: tuple[int, ...]  # one per calc_map_type_and_dist() return seen (enum pci_p2pdma_map_type)
    distances: tuple[int, ...]  # what it wrote to *dist (read at return: kernels >= 6.10 only)
    totals: tuple[int, ...]  # pci_p2pdma_distance_many() returns: the distance, or -1 when NOT_SUPPORTED
    dmesg: tuple[str, ...]  # the lines the enable printed, timestamps removed


_TRACE = re.compile(r"p2pmap: \(.*?\) map=(-?\d+)(?: dist=(-?\d+))?")
_TOTAL = re.compile(r"p2pdist: \(.*?\) dist=(-?\d+)")
_STAMP = re.compile(r"^\[\s*\d+\.\d+\]\s?")


def parse_answers(outputs: dict[str, bytes]) -> list[KernelAnswer]:
    """The guest's /out/pairs.txt and pair-N.{trace,dmesg} as answers, in probe order."""
    answers: list[KernelAnswer] = []
    for line in outputs.get("pairs.txt", b"").decode().splitlines():
        n, cap, prov, client, ns, prc, erc = line.split()
        trace = outputs.get(f"pair-{n}.trace", b"").decode()
        hits = _TRACE.findall(trace)
        dmesg = [_STAMP.sub("", x) for x in outputs.get(f"pair-{n}.dmesg", b"").decode().splitlines() if x.strip()]
        answers.append(KernelAnswer(
            capture=cap, provider=prov, client=client, namespace=ns, p2pmem_rc=int(prc), enable_rc=int(erc),
            map_types=tuple(int(m) for m, _ in hits), distances=tuple(int(d) for _, d in hits if d != ""),
            totals=tuple(int(t) for t in _TOTAL.findall(trace)),
            dmesg=tuple(dmesg),
        ))
    return answers
