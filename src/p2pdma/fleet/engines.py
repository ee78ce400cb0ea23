"""Run analyse_machine() over many machines: in this process, on a local process pool (the
default), or on Dask (the ``p2pdma[dask]`` extra: a local cluster, or an existing scheduler).

Machines travel in batches (many per task) so that neither the pool nor the Dask scheduler is the
bottleneck; rows stream out of iter_rows() as their batch finishes, and run() puts them back in
input order whichever engine ran them. A worker that dies fails its batch's rows, not the run.
Dask is imported only when the Dask engine runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from p2pdma.errors import InputError
from p2pdma.fleet.analyse import MachineResult, analyse_machine

ENGINES = ("pool", "dask", "serial")
DASK_EXTRA = "pip install 'p2pdma[dask]'"
MAX_SHIPPED = 256 << 20  # bytes of one capture sent to a remote Dask worker
MAX_BATCH_SHIPPED = 64 << 20  # bytes of captures in one batch sent to a remote Dask worker
MAX_BATCH = 32  # machines per task at most
BATCHES_PER_WORKER = 4  # at least this many tasks per worker, so that a slow batch does not idle the rest
IN_FLIGHT_PER_WORKER = 4  # Dask batches submitted ahead per worker (captures are read just before)

Progress = Callable[[int, int, int], None]  # (done, total, failed so far)


@dataclass(frozen=True, slots=True)
class Task:
    """One machine to analyse: its name and where its capture (or hwloc XML) lives."""

    name: str
    source: str


class DaskMissing(InputError):
    """--engine dask without the ``p2pdma[dask]`` extra installed: the CLI prints one line, exit 2."""


def _failed(task: Task, why: str) -> MachineResult:
    return MachineResult(name=task.name, source=task.source, status="failed", reason=why[:300])


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def batch_size(total: int, workers: int) -> int:
    """Machines per task: enough tasks for every worker to take BATCHES_PER_WORKER, at most MAX_BATCH."""
    return max(1, min(MAX_BATCH, total // max(1, workers * BATCHES_PER_WORKER)))


def batches(count: int, size: int) -> list[range]:
    """Input positions ``0 .. count-1`` cut into consecutive batches of ``size``."""
    return [range(lo, min(count, lo + size)) for lo in range(0, count, max(1, size))]


Item = tuple[str, str, "bytes | None"]  # (name, source, the capture's bytes for a remote worker)


def analyse_batch(items: Sequence[Item], profile: str) -> list[MachineResult]:
    """analyse_machine() over one batch, in order (runs in pool and Dask workers: module-level,
    arguments and result picklable)."""
    return [analyse_machine(name, source, profile, data) for name, source, data in items]


def _workers(workers: int | None) -> int:
    return workers or os.cpu_count() or 1


def iter_serial(tasks: Sequence[Task], profile: str) -> Iterator[tuple[int, MachineResult]]:
    """One process, one machine after the other (the baseline)."""
    for i, t in enumerate(tasks):
        yield i, analyse_machine(t.name, t.source, profile)


def iter_pool(tasks: Sequence[Task], profile: str, workers: int | None = None) -> Iterator[tuple[int, MachineResult]]:
    """A local process pool (concurrent.futures) of ``workers`` processes (default: CPU count);
    (input position, row) as each batch finishes."""
    n = _workers(workers)
    cut = batches(len(tasks), batch_size(len(tasks), n))
    with ProcessPoolExecutor(max_workers=min(n, max(1, len(cut)))) as ex:
        futures: dict[Future[list[MachineResult]], range] = {
            ex.submit(analyse_batch, [(tasks[i].name, tasks[i].source, None) for i in b], profile): b for b in cut
        }
        for fut in as_completed(futures):
            b = futures[fut]
            try:
                rows = fut.result()
            except Exception as exc:  # a dead worker (BrokenProcessPool) fails its rows
                why = f"worker failed: {type(exc).__name__}: {_first_line(exc)}"
                rows = [_failed(tasks[i], why) for i in b]
            yield from zip(b, rows, strict=True)


def _read_for_shipping(task: Task) -> bytes | MachineResult:
    try:
        size = os.stat(task.source).st_size
        if size > MAX_SHIPPED:
            return _failed(task, f"{task.source}: larger than {MAX_SHIPPED} bytes, not shipped")
        with open(task.source, "rb") as f:
            return f.read(MAX_SHIPPED + 1)
    except OSError as exc:
        return _failed(task, f"{task.source}: {exc.strerror or exc}")


def import_distributed() -> Any:
    """dask.distributed, or DaskMissing naming the extra to install."""
    import importlib

    try:
        return importlib.import_module("distributed")  # untyped calls: keep them Any
    except ImportError:
        raise DaskMissing(f"--engine dask needs Dask, which is not installed: {DASK_EXTRA}") from None


def iter_dask(
    tasks: Sequence[Task],
    profile: str,
    workers: int | None = None,
    scheduler: str | None = None,
) -> Iterator[tuple[int, MachineResult]]:
    """Dask distributed: a LocalCluster of ``workers`` single-threaded processes (closed at the end),
    or the scheduler at ``scheduler``. For a remote scheduler the capture bytes travel with each
    batch (read just before it is submitted, a few batches ahead per worker), so workers need not
    see this machine's files."""
    import logging

    dist = import_distributed()
    cluster: Any = None
    client: Any = None
    scratch: str | None = None
    restore = contextlib.ExitStack()
    run_id = uuid.uuid4().hex[:8]
    try:
        if scheduler:
            try:
                client = dist.Client(scheduler, timeout="20s")
            except Exception as exc:  # one line for an unreachable scheduler
                raise InputError(f"cannot connect to Dask scheduler {scheduler}: {_first_line(exc)}") from None
            n = max(1, len(client.scheduler_info().get("workers", {})) or _workers(workers))
        else:
            import importlib

            n = _workers(workers)
            scratch = tempfile.mkdtemp(prefix="p2pdma-dask-")
            dask_config: Any = importlib.import_module("dask.config")
            restore.enter_context(dask_config.set({"temporary-directory": scratch}))  # Dask's lock files too
            cluster = dist.LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.CRITICAL,  # Dask's own close-time tracebacks stay off stderr
                local_directory=scratch,
            )
            client = dist.Client(cluster)
        cut = iter(batches(len(tasks), batch_size(len(tasks), n)))
        pending: list[int] = []  # shipped batches cut short by the byte cap carry over
        index: dict[str, list[int]] = {}
        running = dist.as_completed()
        seq = 0

        def submit_next() -> list[tuple[int, MachineResult]]:
            """Submit one more batch; rows failed before submitting come back at once."""
            nonlocal seq
            early: list[tuple[int, MachineResult]] = []
            while True:
                if not pending:
                    b = next(cut, None)
                    if b is None:
                        return early
                    pending.extend(b)
                take: list[int] = []
                items: list[Item] = []
                shipped = 0
                while pending:
                    i = pending[0]
                    data: bytes | None = None
                    if scheduler:
                        got = _read_for_shipping(tasks[i])
                        if isinstance(got, MachineResult):
                            early.append((pending.pop(0), got))
                            continue
                        if items and shipped + len(got) > MAX_BATCH_SHIPPED:
                            break
                        data, shipped = got, shipped + len(got)
                    take.append(pending.pop(0))
                    items.append((tasks[i].name, tasks[i].source, data))
                if take:
                    key = f"p2pdma-fleet-{run_id}-{seq}"
                    seq += 1
                    fut = client.submit(analyse_batch, items, profile, key=key, pure=False)
                    index[fut.key] = take
                    running.add(fut)
                    return early

        for _ in range(n * IN_FLIGHT_PER_WORKER):
            yield from submit_next()
        for fut in running:
            take = index.pop(fut.key)
            try:
                rows = fut.result()
            except Exception as exc:  # KilledWorker and the like fail the batch's rows
                why = f"worker failed: {type(exc).__name__}: {_first_line(exc)}"
                rows = [_failed(tasks[i], why) for i in take]
            yield from zip(take, rows, strict=True)
            yield from submit_next()
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
        restore.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def iter_rows(
    tasks: Sequence[Task],
    profile: str,
    engine: str = "pool",
    *,
    workers: int | None = None,
    scheduler: str | None = None,
) -> Iterator[tuple[int, MachineResult]]:
    """(input position, row) for every task, as machines finish on ``engine``."""
    if engine == "serial":
        return iter_serial(tasks, profile)
    if engine == "pool":
        return iter_pool(tasks, profile, workers)
    if engine == "dask":
        import_distributed()  # the missing extra is said before anything starts
        return iter_dask(tasks, profile, workers, scheduler)
    raise InputError(f"unknown engine {engine!r} (one of {', '.join(ENGINES)})")


def run(
    tasks: Sequence[Task],
    profile: str,
    engine: str = "pool",
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: Progress | None = None,
    on_row: Callable[[MachineResult], None] | None = None,
) -> list[MachineResult]:
    """Analyse ``tasks`` on ``engine``; rows in input order. ``progress(done, total, failed)`` and
    ``on_row(row)`` are called as each machine's row arrives."""
    results: list[MachineResult | None] = [None] * len(tasks)
    done = failed = 0
    if progress is not None:
        progress(0, len(tasks), 0)
    for i, r in iter_rows(tasks, profile, engine, workers=workers, scheduler=scheduler):
        if results[i] is None:
            done += 1
            failed += not r.ok
        results[i] = r
        if on_row is not None:
            on_row(r)
        if progress is not None:
            progress(done, len(tasks), failed)
    return [r if r is not None else _failed(tasks[i], "not run") for i, r in enumerate(results)]


def run_serial(tasks: Sequence[Task], profile: str, progress: Progress | None = None) -> list[MachineResult]:
    """One process, one machine after the other."""
    return run(tasks, profile, "serial", progress=progress)


def run_pool(
    tasks: Sequence[Task], profile: str, workers: int | None = None, progress: Progress | None = None
) -> list[MachineResult]:
    """The local process pool."""
    return run(tasks, profile, "pool", workers=workers, progress=progress)


def run_dask(
    tasks: Sequence[Task],
    profile: str,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: Progress | None = None,
) -> list[MachineResult]:
    """Dask distributed (the ``p2pdma[dask]`` extra)."""
    return run(tasks, profile, "dask", workers=workers, scheduler=scheduler, progress=progress)
