"""Many machines at once: analyse captures on a process pool or Dask, group them by topology
fingerprint, find outliers and the top causes. Imports sources and p2p, never cli or report."""
