"""A quicker prefork start: the main process freezes its objects while it forks the first pool (docs/container.md).

Celery's prefork pool runs a full ``gc.collect()`` before it forks each child (celery/concurrency/asynpool.py,
issue #2927). Every one of those collections walks all the objects the imports made, and writes to their headers
after a fork has shared the pages with a child, so the kernel copies the parent's heap again and again: with 8
children on 2 cores, most of the time between "starting" and the first task. Frozen objects (``gc.freeze()``) are
skipped by the collector. So, before each child of the starting pool: collect (what Celery's collection would find)
and freeze; when the worker is ready, unfreeze, so that the main process's collector sees everything again (children
that replace others later are forked as Celery does it). The children keep the frozen state they were forked with:
their collector leaves the inherited objects alone, which also keeps those pages shared.

billiard's children each parse a C declaration with cffi when it is installed (``set_pdeathsig``), which imports
pycparser and builds its parser; done once here, the children inherit it.
"""

from __future__ import annotations

import gc
import sys
from typing import Any

from celery.signals import worker_before_create_process, worker_ready

_starting = True  # until worker_ready, in the main process
_frozen = False  # by us: unfrozen at worker_ready


def _warm_billiard_cffi() -> None:
    # billiard.util.set_pdeathsig uses cffi when it is imported, ctypes otherwise; the same declaration here
    # leaves cffi's parser (pycparser's, built once per process) ready for every child.
    if "cffi" in sys.modules:
        import cffi

        cffi.FFI().cdef("int prctl (int __option, ...);")


@worker_before_create_process.connect(weak=False, dispatch_uid="worker.prefork.freeze")
def _freeze_before_fork(**_: Any) -> None:
    global _frozen
    if not _starting or not gc.isenabled():
        return  # a replacement child, or someone manages the collector themselves
    if not _frozen:
        _warm_billiard_cffi()
    gc.collect()
    gc.freeze()
    _frozen = True


@worker_ready.connect(weak=False, dispatch_uid="worker.prefork.unfreeze")
def _unfreeze_when_ready(**_: Any) -> None:
    global _starting, _frozen
    _starting = False
    if _frozen:
        _frozen = False
        gc.unfreeze()
