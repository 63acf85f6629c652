"""Worker processes that die with the process that started them.

A killed job (``kill -9``, a cancelled workflow, a cluster time limit) does
not run its ``finally`` blocks, so a ``ProcessPoolExecutor``'s workers would
be left running with parent 1, busy with a cohort nobody waits for. On Linux
:func:`process_pool` asks the kernel to kill each worker when its parent
dies (``prctl(PR_SET_PDEATHSIG)``); elsewhere it is a plain pool.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor

__all__ = ["process_pool"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def process_pool(max_workers: int, context: str = "fork") -> ProcessPoolExecutor:
    """A ``ProcessPoolExecutor`` whose workers are killed when this process dies.

    Parameters
    ----------
    max_workers : int
        Worker processes.
    context : {"fork", "spawn", "forkserver"}
        multiprocessing start method. With ``forkserver`` the workers'
        parent is the server, so they die with it, not with this process.
    """
    return ProcessPoolExecutor(max_workers=max_workers, mp_context=multiprocessing.get_context(context),
                               initializer=_die_with_parent, initargs=(os.getpid(),))


def _die_with_parent(parent: int) -> None:
    """Pool initializer: SIGKILL this worker when its parent process exits (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl (an unusual libc): the pool still works
        return
    # The parent may have died between the fork and the prctl call; then no
    # signal will come, and the worker has been re-parented already.
    if os.getppid() != parent:
        os._exit(1)
