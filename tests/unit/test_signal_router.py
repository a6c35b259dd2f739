"""The signal router's phases, driven by calling its handler directly (no real signals)."""

from __future__ import annotations

import signal

import anyio
import pytest

from runner.signals import Phase, SignalRouter


def make_router() -> tuple[SignalRouter, list[str]]:
    lines: list[str] = []
    return SignalRouter(write=lines.append), lines


def test_a_signal_before_sending_exits_75_with_one_line() -> None:
    router, lines = make_router()

    with pytest.raises(SystemExit) as exit_info:
        router.handle(signal.SIGTERM)

    assert exit_info.value.code == 75
    assert len(lines) == 1 and "SIGTERM" in lines[0] and "before anything was sent" in lines[0]


async def test_signals_while_sending_are_handed_over_then_ignored_once_finishing() -> None:
    router, lines = make_router()
    router.installed = True  # as the entry point leaves it; no real handler needed here

    async with router.sending() as received:
        assert router.phase is Phase.SENDING
        router.handle(signal.SIGINT)  # must not raise: the run decides
        router.handle(signal.SIGTERM)
        with anyio.fail_after(1):
            assert [await received.get(), await received.get()] == [
                signal.SIGINT,
                signal.SIGTERM,
            ]
    assert router.phase is Phase.FINISHING
    for _ in range(3):
        router.handle(signal.SIGINT)  # the outcome is known: never an exit from here

    assert len(lines) == 1 and "ignored" in lines[0]


async def test_a_library_caller_gets_its_own_handlers_back() -> None:
    router, _ = make_router()
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}

    async with router.sending():
        assert signal.getsignal(signal.SIGTERM) == router.handle

    assert {s: signal.getsignal(s) for s in before} == before
    assert router.phase is Phase.STARTING and not router.installed
