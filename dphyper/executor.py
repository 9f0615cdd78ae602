"""Benchmark cells as tasks on one executor (issue 39): in this process, a local process pool, or Ray.

Every comparison and sweep cell is an independent task: a picklable module-level function and its arguments,
returning the cell. One driver (``drive``) keeps the executor's slots full from a plan it re-reads after every
finished cell (the sweep's stages follow stage 1's results), and it alone merges results into the committed
JSON: no file locks, no claim files. A cell's identity (its key and method id) does not depend on where it ran,
so cells from a GPU machine and from a laptop merge into one file.

- ``Serial``: in this process, one cell at a time (the Python API's default; tests patch functions here).
- ``LocalPool``: ``concurrent.futures.ProcessPoolExecutor``, one worker per core by default, each worker with
  ``cores // workers`` torch threads. A worker that dies breaks the pool; the driver makes a new one and
  re-runs the cells that were in flight (up to ``RETRIES`` times each), so no cell is lost.
- ``RayExecutor``: ``ray.init(address)`` ("auto": the cluster this machine belongs to; "local": a new
  instance on this machine). One CPU per cell; on a cluster with GPUs, a cell that wants one
  (``Task.gpu``) asks Ray for it as a resource. Ray re-runs a task whose worker died (``max_retries``).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable

RETRIES = 2  # re-runs of a cell whose worker died, after the first try


@dataclass(frozen=True, eq=False)  # hashed by identity: its arguments may hold dicts
class Task:
    key: str
    fn: Callable  # module-level, so that a worker process can import it
    args: tuple = ()
    gpu: bool = False  # whether the cell benefits from a GPU (a Ray cluster with GPUs gives it one)


class WorkerLost(RuntimeError):
    """A cell's worker died RETRIES + 1 times."""


class Serial:
    """Cells one at a time in this process."""

    slots = 1
    name = "serial"

    def start(self, task: Task):
        fut: cf.Future = cf.Future()
        try:
            fut.set_result(task.fn(*task.args))
        except BaseException as e:  # re-raised by the driver, as from a worker
            fut.set_exception(e)
        return fut

    def wait_any(self, handles: list) -> list:
        return list(handles)

    def result(self, handle):
        return handle.result()

    def close(self) -> None:
        pass


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


class LocalPool:
    """One process per slot (``spawn``: a forked copy of a process that already runs torch threads can hang)."""

    name = "local pool"

    def __init__(self, workers: int | None = None) -> None:
        cores = os.cpu_count() or 1
        self.slots = max(1, workers or cores)
        self.threads = max(1, cores // self.slots)
        self._pool = None
        self._tasks: dict[cf.Future, tuple[Task, object]] = {}  # future -> (cell, the pool it ran on)
        self._tries: dict[str, int] = {}

    def _ensure(self):
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(self.slots, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_init_worker, initargs=(self.threads,))
        return self._pool

    def start(self, task: Task):
        pool = self._ensure()
        fut = pool.submit(task.fn, *task.args)
        self._tasks[fut] = (task, pool)
        return fut

    def wait_any(self, handles: list) -> list:
        done, _ = cf.wait(handles, return_when=cf.FIRST_COMPLETED)
        return list(done)

    def result(self, handle):
        """The cell, or (its worker died) a new handle of the same cell on a new pool."""
        task, pool = self._tasks.pop(handle)
        try:
            return handle.result()
        except cf.process.BrokenProcessPool:
            # Every cell in flight on a broken pool fails with it, not only the dead worker's: each is
            # re-run on a new pool (made once), and counted against its own retries.
            tries = self._tries.get(task.key, 0) + 1
            self._tries[task.key] = tries
            if tries > RETRIES:
                raise WorkerLost(f"cell {task.key}: its worker died {tries} times") from None
            if self._pool is pool:
                pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
            return Retry(self.start(task))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


@dataclass
class Retry:
    """``result`` of a handle whose cell was started again: wait for ``handle`` instead."""

    handle: object


def _call(fn, args):
    return fn(*args)


class RayExecutor:
    """Cells as Ray tasks on a cluster (or a local instance)."""

    name = "ray"

    def __init__(self, address: str = "auto") -> None:
        import ray

        from .config import REPO_DIR

        if address == "local":  # a new instance of this machine's cores; workers import dphyper from here
            ray.init(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                     runtime_env={"env_vars": {"PYTHONPATH": str(REPO_DIR)}})
        else:  # ship this checkout to the cluster's workers (code and the shipped checkpoints)
            ray.init(address=address, log_to_driver=False, ignore_reinit_error=True, runtime_env={
                "working_dir": str(REPO_DIR),
                "excludes": [".git", ".venv", "venv", "runs", "tmp", "bench/cache", "*.train.pt", "__pycache__"]})
        self._ray = ray
        res = ray.cluster_resources()
        self.slots = max(1, int(res.get("CPU", 1)))
        self.gpus = int(res.get("GPU", 0))
        self._remote = ray.remote(_call)

    def start(self, task: Task):
        opts = {"num_cpus": 1, "max_retries": RETRIES}
        if task.gpu and self.gpus:
            opts["num_gpus"] = 1
        return self._remote.options(**opts).remote(task.fn, task.args)

    def wait_any(self, handles: list) -> list:
        ready, _ = self._ray.wait(list(handles), num_returns=1)
        return ready

    def result(self, handle):
        try:
            return self._ray.get(handle)
        except self._ray.exceptions.WorkerCrashedError as e:
            raise WorkerLost(str(e)) from None
        except self._ray.exceptions.RayTaskError as e:
            raise e.as_instanceof_cause() from None

    def close(self) -> None:
        self._ray.shutdown()


def make_executor(workers: int = 0, ray: str = ""):
    """The CLI's choice: Ray when an address is given, else a local pool of ``workers`` (0: one per core),
    or this process when that is one worker."""
    if ray:
        return RayExecutor(ray)
    slots = workers or (os.cpu_count() or 1)
    return Serial() if slots == 1 else LocalPool(slots)


@dataclass
class Driver:
    """Keeps ``executor``'s slots full from ``plan()`` (the pending tasks, in order, re-read after every
    finished cell) and hands each result to ``done(task, result)``; stops when nothing is pending or in
    flight, or after ``limit`` started cells (0: no limit)."""

    executor: object
    plan: Callable[[], Iterable[Task]]
    done: Callable[[Task, object], None]
    limit: int = 0
    started: int = 0
    _flight: dict = field(default_factory=dict)

    def run(self) -> int:
        # A cell that raises ends the run with its error; the caller's ``executor.close()`` stops the others.
        while True:
            self._fill()
            if not self._flight:
                return self.started
            for h in self.executor.wait_any(list(self._flight)):
                task = self._flight.pop(h)
                out = self.executor.result(h)
                if isinstance(out, Retry):
                    self._flight[out.handle] = task
                    continue
                self.done(task, out)

    def _fill(self) -> None:
        busy = {t.key for t in self._flight.values()}
        for task in self.plan():
            if len(self._flight) >= self.executor.slots or (self.limit and self.started >= self.limit):
                return
            if task.key in busy:
                continue
            self._flight[self.executor.start(task)] = task
            busy.add(task.key)
            self.started += 1


def drive(executor, plan: Callable[[], Iterable[Task]], done: Callable[[Task, object], None], limit: int = 0) -> int:
    """Run ``plan``'s tasks on ``executor`` (see ``Driver``); returns how many were started."""
    return Driver(executor, plan, done, limit).run()
