from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import random
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from runner.dialects.openai.rules import LIMITS as OPENAI_LIMITS
from runner.errors import InputError
from runner.files import preflight
from runner.files.preflight import prepare_request, read_image_info
from runner.files.uploads import part_bytes
from runner.records import ImageLimits, JobSpec

W, H = 64, 48


def noise(size: tuple[int, int] = (W, H), mode: str = "RGB", seed: int = 0) -> Image.Image:
    bands = len(mode)
    return Image.frombytes(mode, size, random.Random(seed).randbytes(size[0] * size[1] * bands))


def encode(im: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def make_mask(size: tuple[int, int] = (W, H), mode: str = "RGBA", hole: bool = True) -> bytes:
    with Image.new(mode, size, (0, 0, 0, 255) if mode == "RGBA" else (0, 255)) as im:
        if hole:
            im.paste((0, 0, 0, 0) if mode == "RGBA" else (0, 0), (0, 0, 8, 8))
        return encode(im, "PNG")


def spec(
    image: Path, mask: Path | None = None, prompt: str = "paint it blue", **kw: Any
) -> JobSpec:
    return JobSpec(
        key="1a2b3c4d" + "0" * 56,
        entry=0,
        image=image,
        mask=mask,
        prompt=prompt,
        provider="openai",
        model="gpt-image-1",
        params={"size": "auto", "quality": "high"},
        output_dir=image.parent / "out",
        output_name="{stem}-{key8}.{ext}",
        **kw,
    )


def limits(**changes: Any) -> ImageLimits:
    return dataclasses.replace(OPENAI_LIMITS, **changes)


def input_error(job: JobSpec, lim: ImageLimits = OPENAI_LIMITS) -> InputError:
    with pytest.raises(InputError) as info:
        prepare_request(job, lim)
    return info.value


@pytest.fixture
def png(tmp_path: Path) -> Path:
    with noise() as im:
        return write(tmp_path / "boat.png", encode(im, "PNG"))


@pytest.fixture
def jpeg(tmp_path: Path) -> Path:
    with noise() as im:
        return write(tmp_path / "photo.jpg", encode(im, "JPEG", quality=95))


@pytest.fixture
def mask(tmp_path: Path) -> Path:
    return write(tmp_path / "mask.png", make_mask())


# --- good input ---------------------------------------------------------------------------


def test_png_with_mask_sends_the_exact_bytes(png: Path, mask: Path) -> None:
    job = spec(
        png,
        mask,
        image_sha256=hashlib.sha256(png.read_bytes()).hexdigest(),
        mask_sha256=hashlib.sha256(mask.read_bytes()).hexdigest(),
    )
    req = prepare_request(job, OPENAI_LIMITS)
    assert (req.model, req.prompt, dict(req.params)) == (job.model, job.prompt, dict(job.params))
    assert (req.image.filename, req.image.content_type) == ("boat.png", "image/png")
    assert part_bytes("image", req.image) == png.read_bytes()
    assert req.mask is not None
    assert (req.mask.filename, req.mask.content_type) == ("mask.png", "image/png")
    assert part_bytes("mask", req.mask) == mask.read_bytes()
    # Checked, then let go: the request holds where the bytes are, not the bytes.
    assert (req.image.data, req.mask.data) == (b"", b"")
    assert req.image.source is not None and req.image.source.size == png.stat().st_size


def test_bytes_read_while_hashing_are_checked_without_reading_the_file_again(
    png: Path,
) -> None:
    data = png.read_bytes()
    png.unlink()  # only the bytes read a moment ago are left
    req = prepare_request(spec(png), OPENAI_LIMITS, decode=False, preread={png: data})
    assert req.image.data == data
    with pytest.raises(InputError, match="file not found"):
        prepare_request(spec(png), OPENAI_LIMITS, decode=False)
    with pytest.raises(InputError, match="is not an image"):
        prepare_request(spec(png), OPENAI_LIMITS, decode=False, preread={png: b"no image"})


def test_jpeg_without_mask_is_sent_as_is(jpeg: Path) -> None:
    req = prepare_request(spec(jpeg), OPENAI_LIMITS)
    assert (req.image.filename, req.image.content_type) == ("photo.jpg", "image/jpeg")
    assert req.image.data == jpeg.read_bytes()
    assert req.mask is None


def test_webp_content_type(tmp_path: Path) -> None:
    with noise() as im:
        path = write(tmp_path / "x.webp", encode(im, "WEBP"))
    assert prepare_request(spec(path), OPENAI_LIMITS).image.content_type == "image/webp"


def test_jpeg_with_mask_is_converted_to_png(jpeg: Path, mask: Path) -> None:
    req = prepare_request(spec(jpeg, mask), OPENAI_LIMITS)
    assert (req.image.filename, req.image.content_type) == ("photo.png", "image/png")
    with Image.open(io.BytesIO(req.image.data)) as sent:
        assert (sent.format, sent.size) == ("PNG", (W, H))


def test_jpeg_with_exif_rotation_is_turned_before_matching_the_mask(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    with noise() as im:
        photo = write(tmp_path / "phone.jpg", encode(im, "JPEG", exif=exif))
    upright = write(tmp_path / "upright.png", make_mask((H, W)))
    req = prepare_request(spec(photo, upright), OPENAI_LIMITS)
    with Image.open(io.BytesIO(req.image.data)) as sent:
        assert sent.size == (H, W)
    raw = write(tmp_path / "raw.png", make_mask((W, H)))
    err = input_error(spec(photo, raw))
    assert err.field == "mask"
    assert f"is {W}x{H}, image is {H}x{W} after its EXIF rotation" in err.reason


def test_la_mask_is_accepted(png: Path, tmp_path: Path) -> None:
    la = write(tmp_path / "la.png", make_mask(mode="LA"))
    req = prepare_request(spec(png, la), OPENAI_LIMITS)
    assert req.mask is not None and req.mask.data == la.read_bytes()


# --- bad image ----------------------------------------------------------------------------


def test_missing_image(tmp_path: Path) -> None:
    err = input_error(spec(tmp_path / "gone.png"))
    assert err.field == "image"
    assert err.reason == f"file not found: {tmp_path / 'gone.png'}"


def test_image_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "dir.png").mkdir()
    err = input_error(spec(tmp_path / "dir.png"))
    assert (err.field, "not a regular file") == ("image", err.reason.split(":")[0])


def test_unreadable_image(png: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    # Patched only around the call: root would read a chmod 000 file anyway.
    with monkeypatch.context() as m:
        m.setattr(os, "open", refuse)
        err = input_error(spec(png))
    assert err.field == "image"
    assert err.reason == f"cannot read {png}: Permission denied"


def test_empty_image(tmp_path: Path) -> None:
    err = input_error(spec(write(tmp_path / "empty.png", b"")))
    assert err.field == "image"
    assert "file is empty" in err.reason


def test_text_file_is_not_an_image(tmp_path: Path) -> None:
    err = input_error(spec(write(tmp_path / "notes.png", b"just some text\n")))
    assert err.field == "image"
    assert "not an image" in err.reason
    assert str(tmp_path / "notes.png") in err.reason


def test_gif_is_not_accepted(tmp_path: Path) -> None:
    with noise() as im:
        gif = write(tmp_path / "anim.gif", encode(im, "GIF"))
    err = input_error(spec(gif))
    assert err.field == "image"
    assert "format GIF not accepted; use JPEG, PNG or WEBP" in err.reason


@pytest.mark.parametrize("cut", [2, 20, 1000])
def test_truncated_png(png: Path, cut: int) -> None:
    # Cutting 2 bytes leaves IEND's CRC incomplete, which verify() alone lets through.
    png.write_bytes(png.read_bytes()[:-cut])
    err = input_error(spec(png))
    assert err.field == "image"
    assert "truncated or corrupt" in err.reason


def test_png_with_a_flipped_byte(png: Path) -> None:
    data = bytearray(png.read_bytes())
    data[len(data) // 2] ^= 0xFF
    png.write_bytes(bytes(data))
    err = input_error(spec(png))
    assert "truncated or corrupt" in err.reason
    assert "checksum" in err.reason


# Only the 2-byte EOI marker missing still decodes every pixel, as in libjpeg itself, so it
# is accepted; from the third byte on the scan data is short.
@pytest.mark.parametrize("cut", [3, 500])
def test_truncated_jpeg(jpeg: Path, cut: int) -> None:
    jpeg.write_bytes(jpeg.read_bytes()[:-cut])
    err = input_error(spec(jpeg))
    assert err.field == "image"
    assert "truncated or corrupt" in err.reason


def test_without_decoding_an_image_is_judged_by_its_header(
    jpeg: Path, png: Path, mask: Path
) -> None:
    # validate's way over a dataset: a JPEG is not decoded (run decodes it before paying),
    # a PNG's chunks are still checked, and header rules still hold.
    whole = jpeg.read_bytes()
    jpeg.write_bytes(whole[:-500])
    assert prepare_request(spec(jpeg), OPENAI_LIMITS, decode=False).image.data == whole[:-500]
    assert "truncated or corrupt" in input_error(spec(jpeg)).reason
    jpeg.write_bytes(whole)
    beside_mask = prepare_request(spec(jpeg, mask), OPENAI_LIMITS, decode=False)
    assert beside_mask.image.content_type == "image/jpeg"  # not converted to PNG here
    png.write_bytes(png.read_bytes()[:-20])
    with pytest.raises(InputError, match="truncated or corrupt"):
        prepare_request(spec(png), OPENAI_LIMITS, decode=False)
    with pytest.raises(InputError, match="at most 100 pixels"):
        prepare_request(spec(jpeg), limits(max_pixels=100), decode=False)


def test_image_too_large(png: Path) -> None:
    size = png.stat().st_size
    err = input_error(spec(png), limits(max_image_bytes=size - 1))
    assert err.field == "image"
    assert "over the 0.0 MB limit" in err.reason
    assert f"{size:,} bytes" in err.reason


def test_reading_an_image_takes_its_size_not_the_limit(png: Path) -> None:
    # read(n) allocates n bytes first: reading "up to the 50 MB limit" cost 50 MB per job.
    tracemalloc.start()
    try:
        prepare_request(spec(png), limits(max_image_bytes=50 * 2**20))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * png.stat().st_size


def _grown_on_open(monkeypatch: pytest.MonkeyPatch, extra: bytes) -> None:
    """The file grows between the size check (stat) and the read."""
    real = preflight.open_regular

    def grow_then_open(path: Path) -> Any:
        with path.open("ab") as f:
            f.write(extra)
        return real(path)

    monkeypatch.setattr(preflight, "open_regular", grow_then_open)


def test_an_image_that_grows_past_the_limit_while_read_is_refused(
    png: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = png.stat().st_size
    _grown_on_open(monkeypatch, b"x" * 200)
    err = input_error(spec(png), limits(max_image_bytes=size + 100))
    assert "over the" in err.reason and f"{size + 101:,} bytes" in err.reason


def test_an_image_that_grows_while_read_is_read_whole(
    png: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _grown_on_open(monkeypatch, b"tail" * 50)  # PNG readers ignore bytes after IEND
    request = prepare_request(spec(png), OPENAI_LIMITS)
    assert request.image.data == png.read_bytes()
    assert request.image.data.endswith(b"tail" * 50)


def test_image_changed_since_queued(png: Path) -> None:
    err = input_error(spec(png, image_sha256="0" * 64))
    assert err.field == "image"
    assert "changed since the job was queued; run again" in err.reason


@pytest.mark.parametrize(
    ("bounds", "expected"),
    [
        ({"min_pixels": 65_536}, "at least 65,536 pixels required"),
        ({"max_pixels": 1_000}, "at most 1,000 pixels allowed"),
    ],
)
def test_pixel_bounds(png: Path, bounds: dict[str, int], expected: str) -> None:
    err = input_error(spec(png), limits(**bounds))
    assert err.field == "image"
    assert f"is {W}x{H} ({W * H:,} pixels); {expected}" in err.reason


def test_decompression_bomb(png: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    err = input_error(spec(png))
    assert err.field == "image"
    assert "decompression bomb" in err.reason


# --- bad prompt ---------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["", "  \n\t"])
def test_empty_prompt(png: Path, prompt: str) -> None:
    err = input_error(spec(png, prompt=prompt))
    assert (err.field, err.reason) == ("prompt", "prompt is empty")


def test_prompt_too_long(png: Path) -> None:
    err = input_error(spec(png, prompt="x" * 11), limits(max_prompt_chars=10))
    assert (err.field, err.reason) == ("prompt", "prompt is 11 characters, over the 10 limit")


def test_image_is_checked_before_the_prompt(tmp_path: Path) -> None:
    assert input_error(spec(tmp_path / "gone.png", prompt="")).field == "image"


# --- bad mask -----------------------------------------------------------------------------


def test_missing_mask(png: Path, tmp_path: Path) -> None:
    err = input_error(spec(png, tmp_path / "nomask.png"))
    assert err.field == "mask"
    assert err.reason == f"file not found: {tmp_path / 'nomask.png'}"


def test_mask_too_large(png: Path, mask: Path) -> None:
    err = input_error(spec(png, mask), limits(max_mask_bytes=10))
    assert err.field == "mask"
    assert "over the" in err.reason


def test_mask_changed_since_queued(png: Path, mask: Path) -> None:
    err = input_error(spec(png, mask, mask_sha256="f" * 64))
    assert err.field == "mask"
    assert "changed since the job was queued" in err.reason


def test_mask_must_be_png(png: Path, tmp_path: Path) -> None:
    with noise() as im:
        jpg = write(tmp_path / "mask.jpg", encode(im, "JPEG"))
    err = input_error(spec(png, jpg))
    assert err.field == "mask"
    assert err.reason == f"{jpg} is JPEG; a mask must be a PNG"


def test_truncated_mask(png: Path, mask: Path) -> None:
    mask.write_bytes(mask.read_bytes()[:-30])
    err = input_error(spec(png, mask))
    assert (err.field, "truncated or corrupt" in err.reason) == ("mask", True)


@pytest.mark.parametrize("mode", ["RGB", "L", "P"])
def test_mask_without_alpha_channel(png: Path, tmp_path: Path, mode: str) -> None:
    with Image.new(mode, (W, H)) as im:
        # A tRNS entry is not an alpha channel, and OpenAI does not take it as one.
        data = encode(im, "PNG", transparency=(0, 0, 0) if mode == "RGB" else 0)
    err = input_error(spec(png, write(tmp_path / "flat.png", data)))
    assert err.field == "mask"
    assert f"has no alpha channel (mode {mode}); transparent pixels (alpha 0)" in err.reason


def test_mask_of_another_size(png: Path, tmp_path: Path) -> None:
    small = write(tmp_path / "small.png", make_mask((32, 32)))
    err = input_error(spec(png, small))
    assert err.field == "mask"
    assert err.reason == f"{small} is 32x32, image is {W}x{H}"


def test_mask_without_transparent_pixel(png: Path, tmp_path: Path) -> None:
    opaque = write(tmp_path / "opaque.png", make_mask(hole=False))
    err = input_error(spec(png, opaque))
    assert err.field == "mask"
    assert "has no fully transparent pixel, so nothing would be edited" in err.reason


def test_converted_image_over_the_limit(tmp_path: Path, mask: Path) -> None:
    with noise() as im:
        small_jpeg = write(tmp_path / "tiny.jpg", encode(im, "JPEG", quality=10))
    lim = limits(max_image_bytes=small_jpeg.stat().st_size + 100)
    err = input_error(spec(small_jpeg, mask), lim)
    assert err.field == "image"
    assert "converted to PNG (to match the mask)" in err.reason


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_an_image_is_opened_once_to_check_it(
    tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its header, the rules on it and the check that it is whole, from one open: validate
    # checks 100,000 of them.
    opened: list[object] = []
    real_open = Image.open

    def counting_open(*args: Any, **kwargs: Any) -> Image.Image:
        opened.append(args[0])
        return real_open(*args, **kwargs)

    monkeypatch.setattr(preflight.Image, "open", counting_open)
    with noise() as im:
        data = encode(im, fmt)
    prepare_request(spec(write(tmp_path / f"x.{fmt.lower()}", data)), OPENAI_LIMITS)
    assert len(opened) == 1
    assert read_image_info(data) is not None
    assert len(opened) == 2


# --- reply images -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_read_image_info_on_good_bytes(fmt: str) -> None:
    with noise() as im:
        data = encode(im, fmt)
    info = read_image_info(data)
    assert info is not None
    assert (info.data, info.format, info.width, info.height) == (data, fmt, W, H)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_read_image_info_on_truncated_bytes(fmt: str) -> None:
    with noise() as im:
        data = encode(im, fmt)
    assert read_image_info(data[: len(data) * 2 // 3]) is None


@pytest.mark.parametrize("data", [b"", b"<html>502 Bad Gateway</html>", b"\x89PNG\r\n\x1a\n"])
def test_read_image_info_on_garbage(data: bytes) -> None:
    assert read_image_info(data) is None
