"""A job's key is its identity in every database already written: the way it is computed
may get faster, but the key of the same inputs must never change (every job would be sent
and paid for again)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from runner.manifest.expand import KEY_VERSION, Draft, job_key
from runner.records import ProviderProfile


def reference_key(draft: Draft, image_sha: str | None, mask_sha: str | None) -> str:
    """The recipe as it was first written (KEY_VERSION 1): one json.dumps of the whole."""
    payload = {
        "v": KEY_VERSION,
        "image": image_sha or f"unreadable:{draft.image}",
        "mask": (mask_sha or f"unreadable:{draft.mask}") if draft.mask else None,
        "prompt": draft.prompt,
        "provider": draft.provider.name,
        "model": draft.model,
        "params": draft.params,
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def draft(prompt: str, params: Any, *, mask: bool = False, model: str = "gpt-image-2",
          provider: str = "comet") -> Draft:  # fmt: skip
    profile = ProviderProfile(provider, "openai", "http://x/v1", "K", 4, None, 60.0)
    return Draft(
        entry=0, image=Path("/data/é x.png"), mask=Path("/data/m.png") if mask else None,
        prompt=prompt, provider=profile, model=model, params=params, output_name="{stem}",
    )  # fmt: skip


PROMPTS = ["make it blue", 'say "hi" \\ back', "é 日本 🎨", "tab\tnew\nline\x01\u2028", ""]
PARAMS: list[Any] = [
    {},
    {"quality": "low", "n": 2},
    {"size": "1024x1536", "z": None, "a": [1, 2.5, True, {"é": "x"}], "b": {"y": 1, "x": 0}},
]


@pytest.mark.parametrize("params", PARAMS)
@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("shas", [("a" * 64, "b" * 64), (None, None), ("c" * 64, None)])
def test_the_key_is_the_recipe_it_always_was(
    params: Any, prompt: str, mask: bool, shas: tuple[str | None, str | None]
) -> None:
    job = draft(prompt, params, mask=mask)

    assert job_key(job, *shas) == reference_key(job, *shas)


def test_drafts_sharing_a_params_object_keep_their_own_model_and_provider() -> None:
    shared = {"quality": "low"}
    jobs = [
        draft("p", shared),
        draft("p", shared, model="gpt-image-1"),
        draft("p", shared, provider="other"),
        draft("p", {"quality": "low"}),  # equal, not the same object
        draft("p", shared),
    ]

    keys = [job_key(job, "a" * 64, None) for job in jobs]

    assert keys == [reference_key(job, "a" * 64, None) for job in jobs]
    assert len(set(keys[:3])) == 3 and keys[0] == keys[3] == keys[4]


def test_a_known_job_keeps_its_key() -> None:
    # Computed once with the first recipe; a database written since holds this key.
    job = draft("make it blue", {"quality": "low", "n": 2}, mask=True)

    assert job_key(job, "a" * 64, "b" * 64) == (
        "940f775c05ff4be5321b4aca8546e3a2dea8d5fac47df8fde7f3d7ed7c10ef3a"
    )
