"""The one way fastws runs a coroutine to completion: on uvloop when it is there."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Literal, TypeVar

__all__ = ["LoopName", "run"]

T = TypeVar("T")
#: ``auto``: uvloop when installed, else asyncio's default loop.
LoopName = Literal["auto", "uvloop", "asyncio"]


def run(coro: Coroutine[object, None, T], loop: LoopName | str = "auto") -> T:
    """Run ``coro`` on a new event loop and return its result.

    ``loop="uvloop"`` raises :class:`ImportError` when uvloop is not installed;
    ``"auto"`` falls back to asyncio's loop.
    """
    if loop not in ("auto", "uvloop", "asyncio"):
        raise ValueError(f"loop must be 'auto', 'uvloop' or 'asyncio', got {loop!r}")
    if loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                raise
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)
