"""Where CPU-bound work runs: on the event loop when it is small, in a thread when not."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, TypeVarTuple, Unpack

import anyio.to_thread

from runner.settings import INLINE_WORK_LIMIT_BYTES

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


async def run_cpu_work(size: int, function: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
    """Run `function(*args)`, which works through about `size` bytes."""
    if size <= INLINE_WORK_LIMIT_BYTES:
        return function(*args)
    return await anyio.to_thread.run_sync(function, *args)
