"""A process pool that never outlives its command: shared by `prepare` and `synth`.

`concurrent.futures.ProcessPoolExecutor` waits for its workers when the parent is interrupted and leaves them
running when the parent is killed. Here the pool is terminated on any exception (Ctrl-C included), workers ignore
SIGINT (so Ctrl-C prints one line from the parent, not one traceback per worker), and on Linux each worker asks
the kernel to kill it when its parent dies, even by `kill -9`.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import signal
import sys
from typing import Callable, Iterable, TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")
_PR_SET_PDEATHSIG = 1


def _worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the CLI's raising handler: `terminate()` ends a worker quietly
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):  # no prctl: the pool is still terminated on every exception
            pass


def map_jobs(fn: Callable[[T], R], jobs: list[T], nproc: int, desc: str, unit: str = "it",
             chunksize: int = 8) -> list[R]:
    """`[fn(j) for j in jobs]` on `nproc` processes (in order), with a progress bar; serial when nproc <= 1."""
    if nproc <= 1:
        return [fn(j) for j in tqdm(jobs, desc=desc, unit=unit, disable=len(jobs) < 16)]
    with multiprocessing.Pool(nproc, initializer=_worker_init) as pool:  # __exit__ terminates the workers
        results: Iterable[R] = pool.imap(fn, jobs, chunksize=chunksize)
        return list(tqdm(results, total=len(jobs), desc=desc, unit=unit))
