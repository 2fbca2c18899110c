"""A quicker prefork start and shared memory: the main process freezes what its start made (docs/container.md).

Celery's prefork pool runs a full ``gc.collect()`` before it forks each child (celery/concurrency/asynpool.py,
issue #2927), and every child's collector sooner or later walks the objects it inherited. Each walk writes to the
objects' headers, so the kernel copies every page a fork had shared: with 8 children on 2 cores that was most of
the time between "starting" and the first task, and each child ended up with a private copy of the whole heap.
Frozen objects (``gc.freeze()``) are skipped by the collector. So, before the first pool forks, the main process
collects (what Celery's collection would find) and freezes everything its start made, for good: its collector and
every child's, replacements included, leave those objects alone and their pages stay shared. Objects made after
that are collected as usual. The price: a reference cycle among the frozen objects is never collected; they are
the modules, classes, settings and clients of the start, which live as long as the process anyway, so what can
stay behind is bounded by what the start made (bench/README.md, "Worker memory").

billiard's children each parse a C declaration with cffi when it is installed (``set_pdeathsig``), which imports
pycparser and builds its parser; done once here, the children inherit it.
"""

from __future__ import annotations

import gc
import sys
from typing import Any

from celery.signals import worker_before_create_process

_frozen = False  # set once, by the first fork of the first pool


def _warm_billiard_cffi() -> None:
    # billiard.util.set_pdeathsig uses cffi when it is imported, ctypes otherwise; the same declaration here
    # leaves cffi's parser (pycparser's, built once per process) ready for every child.
    if "cffi" in sys.modules:
        import cffi

        cffi.FFI().cdef("int prctl (int __option, ...);")


@worker_before_create_process.connect(weak=False, dispatch_uid="worker.prefork.freeze")
def _freeze_before_first_fork(**_: Any) -> None:
    global _frozen
    if _frozen or not gc.isenabled():
        return  # frozen already (later children inherit it), or someone manages the collector themselves
    _warm_billiard_cffi()
    gc.collect()
    gc.freeze()
    _frozen = True
