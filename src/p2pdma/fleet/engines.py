"""Run analyse_machine() over many machines: in this process, on a local process pool, or on Dask
(a local cluster by default, or an existing scheduler). Rows come back in input order whichever
engine ran them; a worker that dies fails its machine's row, not the run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from p2pdma.errors import InputError
from p2pdma.fleet.analyse import MachineResult, analyse_machine

ENGINES = ("pool", "dask", "serial")
MAX_SHIPPED = 256 << 20  # bytes of one capture sent to a remote Dask worker

Progress = Callable[[int, int, int], None]  # (done, total, failed so far)


@dataclass(frozen=True, slots=True)
class Task:
    """One machine to analyse: its name and where its capture (or hwloc XML) lives."""

    name: str
    source: str


def _failed(task: Task, why: str) -> MachineResult:
    return MachineResult(name=task.name, source=task.source, status="failed", reason=why[:300])


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def _tick(progress: Progress | None, done: int, total: int, failed: int) -> None:
    if progress is not None:
        progress(done, total, failed)


def run_serial(tasks: Sequence[Task], profile: str, progress: Progress | None = None) -> list[MachineResult]:
    """One process, one machine after the other (the baseline)."""
    out: list[MachineResult] = []
    failed = 0
    for t in tasks:
        r = analyse_machine(t.name, t.source, profile)
        failed += not r.ok
        out.append(r)
        _tick(progress, len(out), len(tasks), failed)
    return out


def run_pool(
    tasks: Sequence[Task], profile: str, workers: int | None = None, progress: Progress | None = None
) -> list[MachineResult]:
    """A local process pool (concurrent.futures), ``workers`` processes (default: CPU count)."""
    results: list[MachineResult | None] = [None] * len(tasks)
    failed = 0
    done = 0
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1) as ex:
        futures: dict[Future[MachineResult], int] = {
            ex.submit(analyse_machine, t.name, t.source, profile): i for i, t in enumerate(tasks)
        }
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                r = fut.result()
            except Exception as exc:  # a dead worker (BrokenProcessPool) fails its rows
                r = _failed(tasks[i], f"worker failed: {type(exc).__name__}: {_first_line(exc)}")
            results[i] = r
            done += 1
            failed += not r.ok
            _tick(progress, done, len(tasks), failed)
    return [r if r is not None else _failed(tasks[i], "not run") for i, r in enumerate(results)]


def _read_for_shipping(task: Task) -> bytes | MachineResult:
    try:
        size = os.stat(task.source).st_size
        if size > MAX_SHIPPED:
            return _failed(task, f"{task.source}: larger than {MAX_SHIPPED} bytes, not shipped")
        with open(task.source, "rb") as f:
            return f.read(MAX_SHIPPED + 1)
    except OSError as exc:
        return _failed(task, f"{task.source}: {exc.strerror or exc}")


def run_dask(
    tasks: Sequence[Task],
    profile: str,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: Progress | None = None,
) -> list[MachineResult]:
    """Dask distributed: a LocalCluster of ``workers`` single-threaded processes (closed at the end),
    or the scheduler at ``scheduler``. For a remote scheduler the capture bytes travel with each
    task, so workers need not see this machine's files."""
    import importlib
    import logging

    try:
        dist: Any = importlib.import_module("distributed")  # untyped calls: keep them Any
    except ImportError as exc:  # pragma: no cover - dask is a dependency
        raise InputError(f"--engine dask needs dask[distributed] ({exc})") from None

    cluster: Any = None
    client: Any = None
    scratch: str | None = None
    restore = contextlib.ExitStack()
    run_id = uuid.uuid4().hex[:8]
    results: list[MachineResult | None] = [None] * len(tasks)
    try:
        if scheduler:
            try:
                client = dist.Client(scheduler, timeout="20s")
            except Exception as exc:  # one line for an unreachable scheduler
                raise InputError(f"cannot connect to Dask scheduler {scheduler}: {_first_line(exc)}") from None
        else:
            scratch = tempfile.mkdtemp(prefix="p2pdma-dask-")
            dask_config: Any = importlib.import_module("dask.config")
            restore.enter_context(dask_config.set({"temporary-directory": scratch}))  # Dask's lock files too
            cluster = dist.LocalCluster(
                n_workers=workers or os.cpu_count() or 1,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
                local_directory=scratch,
            )
            client = dist.Client(cluster)
        index = {}
        futures = []
        for i, t in enumerate(tasks):
            data: bytes | None = None
            if scheduler:
                shipped = _read_for_shipping(t)
                if isinstance(shipped, MachineResult):
                    results[i] = shipped
                    continue
                data = shipped
            fut = client.submit(analyse_machine, t.name, t.source, profile, data, key=f"p2pdma-fleet-{run_id}-{i}")
            index[fut.key] = i
            futures.append(fut)
        done = failed = sum(r is not None for r in results)
        _tick(progress, done, len(tasks), failed)
        for fut in dist.as_completed(futures):
            i = index[fut.key]
            try:
                r = fut.result()
            except Exception as exc:  # KilledWorker and the like fail the row
                r = _failed(tasks[i], f"worker failed: {type(exc).__name__}: {_first_line(exc)}")
            results[i] = r
            done += 1
            failed += not r.ok
            _tick(progress, done, len(tasks), failed)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
        restore.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return [r if r is not None else _failed(tasks[i], "not run") for i, r in enumerate(results)]


def run(
    tasks: Sequence[Task],
    profile: str,
    engine: str = "pool",
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: Progress | None = None,
) -> list[MachineResult]:
    """Analyse ``tasks`` on ``engine``; rows in input order."""
    if engine == "serial":
        return run_serial(tasks, profile, progress)
    if engine == "pool":
        return run_pool(tasks, profile, workers, progress)
    if engine == "dask":
        return run_dask(tasks, profile, workers, scheduler, progress)
    raise InputError(f"unknown engine {engine!r} (one of {', '.join(ENGINES)})")
