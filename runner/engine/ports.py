"""What the engine needs from the world, and nothing of how it is done: a `Provider` to
send each profile's requests to (`dialects/` implement it over HTTP), and `Files` for
pre-flight, outputs and free space (`files/` implements them on disk). `app/` plugs them in,
tests plug in fakes; the engine imports no HTTP, SQL or image library.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from runner.records import (
    EditRequest,
    EditResult,
    ImageLimits,
    JobSpec,
    OutputPlace,
    OutputRef,
    ReplyImage,
)

if TYPE_CHECKING:
    from runner.engine.pacing import ProviderGate
    from runner.engine.pricing import PriceBook


class Provider(Protocol):
    name: str

    def limits_for(self, model: str) -> ImageLimits:
        """File and prompt bounds that pre-flight checks a job's inputs against."""
        ...

    def check_request(self, request: EditRequest) -> None:
        """Model-specific checks before paying (Venice's catalogue); raises InputError."""
        ...

    async def edit(self, request: EditRequest) -> EditResult: ...


Prepare = Callable[[JobSpec, ImageLimits], EditRequest]
WriteOutputs = Callable[[JobSpec, Sequence[ReplyImage]], tuple[OutputRef, ...]]


@dataclass(frozen=True, slots=True)
class Files:
    """The file system as the pool uses it."""

    prepare: Prepare  # read and check a job's inputs; raises InputError (never sent)
    write: WriteOutputs  # write a reply's images durably; raises OutputError
    free_space: Callable[[OutputPlace], int]  # bytes free where a folder lives
    # Besides each job's output folder: (what, folder) whose disk must not fill up.
    watch_folders: Sequence[tuple[str, Path]] = ()


class JobFeed(Protocol):
    """Jobs still arriving: the manifest's sync runs behind the pool (`app/context.py`)."""

    @property
    def done(self) -> bool: ...

    @property
    def synced(self) -> int:
        """How many of the manifest's positions are written."""
        ...

    @property
    def bound(self) -> int | None:
        """Claim only jobs at positions before this (None: any)."""
        ...

    async def changed(self, since: int) -> None:
        """Until more than `since` positions are written, or the sync ends."""
        ...

    def sending(self) -> None:
        """A request is leaving: the sync, held back for the first, may read on."""
        ...


@dataclass(frozen=True, slots=True)
class Lane:
    """One provider profile as the pool drives it: where requests go, the gate that paces
    them, how many may be out at once, and what they cost."""

    provider: Provider
    gate: ProviderGate
    concurrency: int
    prices: PriceBook | None = None
