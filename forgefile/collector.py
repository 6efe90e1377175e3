"""Pausing Python's cyclic garbage collector while a pass builds objects that all stay alive."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused() -> Iterator[None]:
    """Run the block with the cyclic collector off, and turn it back on after, if it was on.

    Parsing and lowering a Forgefile, or judging every resource with every rule, allocate
    hundreds of thousands of small objects that live until the pass ends: the collector would
    walk them again and again, finding nothing to free (docs/performance.md). Reference
    counting still frees everything else as usual.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()
