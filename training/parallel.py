"""Map a function over items on several cores, wherever the caller runs."""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator


@contextmanager
def imap(fn: Callable, items: Iterable, workers: int, chunksize: int = 32) -> Iterator[Iterator]:
    """Ordered lazy map: processes normally; threads inside a daemonic process (a Celery prefork
    child may not have children), where PIL's decoders still release the GIL for most of the work."""
    if multiprocessing.current_process().daemon:
        with ThreadPoolExecutor(workers) as pool:
            yield pool.map(fn, items)
    else:
        # forkserver, not fork: the caller may be a threaded process (a test run with live servers,
        # TensorFlow's thread pools, a progress bar's monitor); a child forked from it can inherit a
        # lock some other thread held and hang, and a pool never hears of a lost child's work
        with multiprocessing.get_context("forkserver").Pool(workers) as pool:
            yield pool.imap(fn, items, chunksize=chunksize)


def counted(items: Iterable, total: int, on_item: Callable[[int, int], None] | None) -> Iterator:
    """``items`` unchanged, calling ``on_item(done, total)`` after each one (when given): the
    heartbeat of a long decode, so a training run is not taken for a stalled one."""
    for done, item in enumerate(items, 1):
        yield item
        if on_item is not None:
            on_item(done, total)
