"""One copy each of what many tests need: a clock that does not wait, small images, a
reader for the multipart requests the runner sends (the fakes' own strict parser), and the
`runner` command run in process."""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.lowlevel
import httpx
import pytest
from click.testing import CliRunner
from PIL import Image

from runner.cli import THIRD_PARTY_LOGGERS
from runner.cli import main as command_line
from runner.manifest.digests import Digester
from runner.testing.multipart import Part, parse_multipart

__all__ = [
    "FakeClock",
    "Part",
    "Ran",
    "invoke",
    "multipart_by_name",
    "multipart_parts",
    "png_bytes",
]


class FakeClock:
    """Monotonic time that moves only when someone sleeps; every sleep is recorded."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await anyio.lowlevel.checkpoint()


def png_bytes(
    size: tuple[int, int] = (8, 8),
    color: tuple[int, int, int] = (1, 2, 3),
    *,
    gradient: bool = False,
) -> bytes:
    """A PNG of one colour, or a gradient (so a wrong crop or shift cannot go unnoticed)."""
    picture = Image.new("RGB", size, color)
    if gradient:
        width, height = size
        picture.putdata(
            [((x * 4) % 256, (y * 5) % 256, 90) for y in range(height) for x in range(width)]
        )
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return buffer.getvalue()


def multipart_parts(request: httpx.Request) -> list[Part]:
    """Every part of a multipart/form-data request, in order."""
    return parse_multipart(request.headers["content-type"], request.content)


def multipart_by_name(request: httpx.Request) -> dict[str, Part]:
    """The parts by name, for a request that sends each field once."""
    parts: dict[str, Part] = {}
    for part in multipart_parts(request):
        assert part.name not in parts, f"part {part.name!r} sent twice"
        parts[part.name] = part
    return parts


@dataclass(frozen=True, slots=True)
class Ran:
    """What a process would have shown: its exit code and its two streams."""

    returncode: int
    stdout: str
    stderr: str


def invoke(*args: str | Path, env: Mapping[str, str | None]) -> Ran:
    """The `runner` command in process, through click's CliRunner: real arguments, exit
    code, stdout and stderr, with `env` set (None: unset) for the call only."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    # The command sets these loggers' levels too; later tests must not inherit them.
    named = [logging.getLogger(name) for name in ("runner", *THIRD_PARTY_LOGGERS)]
    levels = [logger.level for logger in named]
    try:  # an unexpected exception fails the test, as a traceback would
        result = CliRunner().invoke(
            command_line, [str(arg) for arg in args], env=dict(env), catch_exceptions=False
        )
    finally:  # the command pointed logging at streams that close with it
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])  # setLevel, not `.level =`: it clears the loggers' cache
        for logger, level in zip(named, levels, strict=True):
            logger.setLevel(level)
    return Ran(result.exit_code, result.stdout, result.stderr)


def files_hashed(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The paths every Digester hashes from now on (small or large; not those whose cached
    digest still holds), in order."""
    hashed: list[Path] = []
    real = Digester._remember

    def remember(self: Digester, path: Path, *rest: Any) -> str:
        hashed.append(path)
        return real(self, path, *rest)

    monkeypatch.setattr(Digester, "_remember", remember)
    return hashed
