"""Venice's edit endpoints refuse fields they do not declare (`additionalProperties: false`):
unknown params are a manifest error, `jpg` goes out as the schema's `jpeg`, and a 400's
field-by-field details reach the job's error. MockTransport; no network."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from PIL import Image

from runner.dialects.venice.client import VeniceProvider, classify_venice, invalid_params
from runner.errors import ManifestError, PermanentJobError
from runner.manifest.expand import parse_manifest
from runner.records import EditRequest, ImagePart

BASE = "https://api.venice.test/api/v1"
ACCEPTED = (
    "aspect_ratio, disable_prompt_optimization_thinking, enhance_prompt, output_format, "
    "quality, resolution, safe_mode"
)


def picture(size: tuple[int, int] = (320, 240)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (40, 90, 200)).save(buffer, "PNG")
    return buffer.getvalue()


PNG = picture()


def manifest(tmp_path: Path, dialect: str = "venice", **job: Any) -> Path:
    (tmp_path / "a.png").write_bytes(PNG)
    document = {
        "providers": {"v": {"dialect": dialect, "base_url": BASE, "api_key_env": "K"}},
        "jobs": [{"image": "a.png", "prompt": "x"}, {"image": "a.png", "prompt": "y", **job}],
    }
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


# --- at manifest time -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["seed", "negative_prompt", "style_preset", "steps", "modelid"])
def test_unknown_venice_params_are_refused_naming_the_field_and_the_accepted_ones(
    tmp_path: Path, name: str
) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(manifest(tmp_path, params={name: 42}))
    message = str(caught.value)
    assert f"jobs.yaml: jobs[1].params.{name}: unknown param" in message
    assert f"accepted: {ACCEPTED}" in message
    assert "\n" not in message


def test_unknown_params_in_defaults_are_refused_too(tmp_path: Path) -> None:
    path = manifest(tmp_path)
    document = yaml.safe_load(path.read_text())
    document["defaults"] = {"params": {"seed": 42}}
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ManifestError, match=r"jobs\[0\]\.params\.seed: unknown param"):
        parse_manifest(path)


def test_every_declared_venice_param_is_accepted(tmp_path: Path) -> None:
    params = {
        "aspect_ratio": "auto",
        "resolution": "1K",
        "output_format": "jpg",
        "safe_mode": False,
        "enhance_prompt": False,
        "disable_prompt_optimization_thinking": True,
        "quality": "high",
    }
    parsed = parse_manifest(manifest(tmp_path, params=params))
    assert parsed.drafts[1].params == params


def test_n_keeps_its_own_explanation(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="one image per edit"):
        parse_manifest(manifest(tmp_path, params={"n": 2}))


def test_openai_params_still_pass_through(tmp_path: Path) -> None:
    parsed = parse_manifest(manifest(tmp_path, dialect="openai", params={"moderation": "low"}))
    assert parsed.drafts[1].params == {"moderation": "low"}


# --- on the wire ----------------------------------------------------------------------------


async def sent(big: bool = False, mask: bool = False, **params: Any) -> httpx.Request:
    seen: list[httpx.Request] = []

    def answer(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, content=PNG, headers={"content-type": "image/png"})

    image = ImagePart("a.png", "image/png", PNG)
    request = EditRequest("m", "p", image, image if mask else None, params)
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        limit = 0 if big else 10**9  # 0: every upload goes as multipart
        provider = VeniceProvider("v", BASE, client, api_key="k" * 12, json_limit_bytes=limit)
        await provider.edit(request)
    return seen[0]


@pytest.mark.parametrize("mask", [False, True], ids=["edit", "multi-edit"])
async def test_jpg_is_sent_as_jpeg_in_json(mask: bool) -> None:
    body = json.loads((await sent(mask=mask, output_format="jpg")).content)
    assert body["output_format"] == "jpeg"


async def test_jpg_is_sent_as_jpeg_in_multipart() -> None:
    request = await sent(big=True, output_format="jpg")
    assert b'name="output_format"\r\n\r\njpeg\r\n' in request.content
    assert b"jpg" not in request.content


async def test_other_formats_are_sent_as_written() -> None:
    assert json.loads((await sent(output_format="webp")).content)["output_format"] == "webp"


# --- a 400's details ------------------------------------------------------------------------


def _400(body: dict[str, Any]) -> PermanentJobError:
    error = classify_venice(httpx.Response(400, json=body), 0.0)
    assert isinstance(error, PermanentJobError)
    return error


def test_zod_details_reach_the_message() -> None:
    error = _400(
        {
            "error": "Invalid request",
            "details": {
                "_errors": ["Unrecognized key(s) in object: 'seed'"],
                "aspect_ratio": {"_errors": ["Invalid enum value. Expected 'auto' | '1:1'"]},
            },
        }
    )
    assert error.describe() == (
        "HTTP 400: Invalid request: invalid params: Unrecognized key(s) in object: 'seed'; "
        "aspect_ratio: Invalid enum value. Expected 'auto' | '1:1'"
    )


def test_zod_issues_reach_the_message() -> None:
    error = _400(
        {
            "error": "Invalid request",
            "code": "INVALID_REQUEST",
            "issues": [
                {"code": "unrecognized_keys", "path": ["seed"], "message": "Unrecognized key"},
                {"path": ["images", 1], "message": "Expected string"},
            ],
        }
    )
    assert error.describe() == (
        "HTTP 400 INVALID_REQUEST: Invalid request: invalid params: seed: Unrecognized key; "
        "images.1: Expected string"
    )


def test_details_stay_short_and_on_one_line() -> None:
    details = {f"field{i}": {"_errors": [f"problem\nnumber {i}"]} for i in range(100)}
    text = invalid_params({"details": details})
    assert text is not None
    assert "\n" not in text
    assert len(text) <= 300 and text.endswith("…")


def test_without_details_the_message_is_unchanged() -> None:
    assert (
        _400({"error": "Corrupted image", "code": "CORRUPTED_IMAGE"}).message == "Corrupted image"
    )
    assert invalid_params({"details": {"_errors": []}}) is None


def test_odd_detail_shapes_are_ignored() -> None:
    assert invalid_params({"issues": 5, "details": {"_errors": "x", "f": [1]}}) is None
    assert invalid_params({"issues": [{"path": "seed", "message": "bad"}]}) == "seed: bad"
