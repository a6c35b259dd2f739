"""validate's chunk work (app/checking.py) without forking: what crosses to a worker comes
back whole, and the collector's pace is put back however the checking ends."""

from __future__ import annotations

import gc
import pickle
from pathlib import Path
from typing import Any

import pytest

from runner.app import checking
from runner.manifest.expand import Draft
from runner.records import ProviderProfile


def draft(mask: Path | None) -> Draft:
    profile = ProviderProfile("p", "openai", "http://x/v1", "K", 4, None, 60.0)
    return Draft(
        entry=3, image=Path("/data/a b/é.png"), mask=mask, prompt="make it blue",
        provider=profile, model="gpt-image-2", params={"quality": "low", "n": 2},
        output_name="{stem}.{ext}", glob="*.png", row=(0, 7),
        carried=((Path("/t.parquet/1/image/x.png"), "ab" * 32),),
    )  # fmt: skip


@pytest.mark.parametrize("mask", [None, Path("/data/masks/é.png")])
def test_a_draft_sent_to_a_worker_arrives_equal(mask: Path | None) -> None:
    sent = draft(mask)

    arrived = pickle.loads(pickle.dumps(sent, protocol=pickle.HIGHEST_PROTOCOL))

    assert arrived == sent and isinstance(arrived.image, Path)
    assert arrived.mask is None if mask is None else isinstance(arrived.mask, Path)


def test_checking_collects_garbage_less_often_and_puts_the_pace_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = gc.get_threshold()
    seen: list[int] = []

    def check(drafts: Any) -> Any:
        seen.append(gc.get_threshold()[0])
        return object()

    chunks = [[draft(None)], [draft(None)], [draft(None)]]
    monkeypatch.setattr(checking, "_workers", lambda: 0)

    for index, _ in enumerate(checking.checked_chunks(check, chunks)):  # type: ignore[arg-type]
        if index == 1:
            break  # the caller stops early (a manifest error): the generator is closed
    assert seen == [checking._GC_EVERY] * 2 and before[0] < checking._GC_EVERY
    assert gc.get_threshold() == before
