"""Pre-flight checks of a job's files: a request is paid for, so bad input never leaves.

Everything here is synchronous and meant for a worker thread.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from runner.errors import InputError
from runner.files.carried import read_carried
from runner.files.uploads import ReadAhead
from runner.manifest.digests import open_regular
from runner.manifest.tables import CarriedSource, carried_source
from runner.records import (
    EditRequest,
    ImageLimits,
    ImagePart,
    InputFile,
    JobSpec,
    ReplyImage,
)

_MIB = 1024 * 1024
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA"})
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})
# Orientations 5-8 turn the picture by a quarter, so width and height swap on screen.
_QUARTER_TURNS = frozenset({5, 6, 7, 8})
# IEND carries no data, so its CRC is a constant; verify() stops before reading it.
_IEND_CRC = b"\xaeB`\x82"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_ONLY = ("PNG",)


@dataclass(frozen=True, slots=True)
class _Info:
    format: str
    width: int
    height: int
    orientation: int  # EXIF orientation, 1 when absent


class _BadImage(Exception):
    """Bytes Pillow cannot use; `reason` reads after the file's path ("is truncated ...")."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def prepare_request(
    spec: JobSpec,
    limits: ImageLimits,
    *,
    decode: bool = True,
    rehash: bool = True,
    preread: Mapping[Path, bytes] | None = None,
    read_ahead: ReadAhead | None = None,
) -> EditRequest:
    """Check the job's files and prompt and build what to send; raise InputError if unusable.

    `decode=False` (validate, over a whole dataset): a JPEG or WebP image is judged by its
    header (format, size, pixels) and not decoded, nor converted to PNG beside a mask: a
    12 MP photo takes 20-50 ms to decode, an hour over 100,000 of them. A PNG's chunks are
    still checked (cheap), and a mask still decoded (its alpha is a rule). `run` decodes
    every image before it pays for it.

    `rehash=False` (validate, which took the digests a moment ago): the files are not
    hashed again to see they are still what the job was keyed by; `preread`: files read
    whole while they were hashed (`Digester(keep_bytes=...)`), not read again.

    `read_ahead` (run): the checked bytes are kept for the first send while its allowance
    lasts (files/uploads.py)."""
    image_sha, mask_sha = (spec.image_sha256, spec.mask_sha256) if rehash else (None, None)
    image_data, image_file = _read_file(
        "image", spec.image, limits.max_image_bytes, image_sha, preread
    )
    info = _check_image(spec.image, image_data, limits, decode)
    _check_prompt(spec.prompt, limits.max_prompt_chars)
    image = _part(spec.image.name, _content_type(info.format), image_data, image_file, read_ahead)
    mask = None
    if spec.mask is not None:
        mask_data, mask_file = _read_file(
            "mask", spec.mask, limits.max_mask_bytes, mask_sha, preread
        )
        mask = _part(spec.mask.name, "image/png", mask_data, mask_file, read_ahead)
        turned = info.format != "PNG" and info.orientation in _QUARTER_TURNS
        size = (info.height, info.width) if turned else (info.width, info.height)
        _check_mask(spec.mask, mask_data, size, turned)
        if info.format != "PNG" and decode:
            # OpenAI wants image and mask in one format, and the mask must be PNG for its
            # alpha. Converting is the slow step (seconds for 12 MP), so it comes last.
            image = _as_png(spec.image, image_data, limits.max_image_bytes)
    return EditRequest(spec.model, spec.prompt, image, mask, spec.params)


def _part(
    filename: str,
    content_type: str,
    data: bytes,
    file: InputFile | None,
    read_ahead: ReadAhead | None = None,
) -> ImagePart:
    """A checked file's bytes are let go, or held for the first send while `read_ahead`
    has room: a send without them reads the file again (files/uploads.py), and checks it
    is still these bytes."""
    if file is None:
        return ImagePart(filename, content_type, data)
    held = read_ahead.hold(data) if read_ahead is not None else None
    return ImagePart(filename, content_type, b"", file, held)


def read_image_info(data: bytes) -> ReplyImage | None:
    """Describe a provider's reply image, or None if the bytes are not a whole image."""
    try:
        info = _examine(data)
    except _BadImage:
        return None
    return ReplyImage(data, info.format, info.width, info.height)


def _read_file(
    field: str,
    path: Path,
    max_bytes: int,
    sha256: str | None,
    preread: Mapping[Path, bytes] | None = None,
) -> tuple[bytes, InputFile | None]:
    """The input's bytes, checked against `sha256` when there is one; with them, the file
    to read them from again when sending (None: keep the bytes, e.g. a table carried them)."""
    where = path.absolute()
    data = preread.get(path) if preread else None  # a regular file, read a moment ago
    if data is None:
        try:
            st = path.stat()
        except FileNotFoundError as exc:
            if (source := carried_source(path)) is not None:
                return _read_carried(field, source, max_bytes), None
            raise InputError(field, f"file not found: {where}") from exc
        except OSError as exc:
            raise InputError(field, f"cannot read {where}: {exc.strerror or exc}") from exc
        data = _read_regular(field, path, st, max_bytes)
    _check_size(field, where, len(data), max_bytes)
    _check_unchanged(field, where, data, sha256)
    return data, InputFile(where, len(data), sha256) if sha256 is not None else None


def _read_regular(field: str, path: Path, st: os.stat_result, max_bytes: int) -> bytes:
    where = path.absolute()
    if not stat.S_ISREG(st.st_mode):
        raise InputError(field, f"not a regular file: {where}")
    _check_size(field, where, st.st_size, max_bytes)
    try:
        with open_regular(path) as f:  # never blocks on a FIFO swapped in since stat()
            # Its size and one byte (read(n) allocates n bytes up front: reading up to the
            # limit would take 25 MB for every file); past that it grew since stat().
            data = f.read(min(st.st_size, max_bytes) + 1)
            if len(data) > st.st_size:
                data += f.read(max_bytes + 1 - len(data))
    except OSError as exc:
        raise InputError(field, f"cannot read {where}: {exc.strerror or exc}") from exc
    return data


def _read_carried(field: str, source: CarriedSource, max_bytes: int) -> bytes:
    """An image a table carries, read from it again; its digest is in its locator, so a
    table changed since the job was queued is caught whatever the caller knows."""
    where = f"row {source.row} of {source.table}, column {source.column!r}"
    try:
        data = read_carried(source)
    except OSError as exc:
        raise InputError(field, f"cannot read {where}: {exc}") from exc
    _check_size(field, where, len(data), max_bytes)
    _check_unchanged(field, where, data, source.sha256)
    return data


def _check_unchanged(field: str, where: object, data: bytes, sha256: str | None) -> None:
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256.lower():
        raise InputError(
            field, f"{where} changed since the job was queued; run again to queue the new version"
        )


def _check_size(field: str, where: object, size: int, max_bytes: int) -> None:
    if size == 0:
        raise InputError(field, f"file is empty: {where}")
    if size > max_bytes:
        raise InputError(
            field, f"{where} is {_mb(size)}, over the {_mb(max_bytes)} limit ({size:,} bytes)"
        )


def _mb(size: int) -> str:
    return f"{size / _MIB:.1f} MB"


def _check_image(path: Path, data: bytes, limits: ImageLimits, decode: bool = True) -> _Info:
    where = path.absolute()

    def rules(info: _Info) -> None:  # from the header, before a pixel is decoded
        if info.format not in limits.formats:
            names = sorted(limits.formats)
            accepted = f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]
            raise InputError("image", f"{where}: format {info.format} not accepted; use {accepted}")
        pixels = info.width * info.height
        dims = f"{where} is {info.width}x{info.height} ({pixels:,} pixels)"
        if limits.min_pixels is not None and pixels < limits.min_pixels:
            raise InputError("image", f"{dims}; at least {limits.min_pixels:,} pixels required")
        if limits.max_pixels is not None and pixels > limits.max_pixels:
            raise InputError("image", f"{dims}; at most {limits.max_pixels:,} pixels allowed")

    try:
        return _examine(data, rules, decode)
    except _BadImage as exc:
        raise InputError("image", f"{where} {exc.reason}") from exc


def _check_prompt(prompt: str, max_chars: int) -> None:
    if not prompt.strip():
        raise InputError("prompt", "prompt is empty")
    if len(prompt) > max_chars:
        raise InputError(
            "prompt", f"prompt is {len(prompt):,} characters, over the {max_chars:,} limit"
        )


def _check_mask(path: Path, data: bytes, image_size: tuple[int, int], turned: bool) -> None:
    where = path.absolute()
    try:
        info = _examine(data, _png_only(where))
        with _pillow(io.BytesIO(data)) as im:
            mode = im.mode
            alpha = im.getchannel("A").getextrema() if mode in _ALPHA_MODES else None
    except _BadImage as exc:
        raise InputError("mask", f"{where} {exc.reason}") from exc
    if alpha is None:
        raise InputError(
            "mask",
            f"{where} has no alpha channel (mode {mode}); "
            "transparent pixels (alpha 0) mark the area to edit",
        )
    if (info.width, info.height) != image_size:
        note = " after its EXIF rotation" if turned else ""
        raise InputError(
            "mask",
            f"{where} is {info.width}x{info.height}, "
            f"image is {image_size[0]}x{image_size[1]}{note}",
        )
    if alpha[0] != 0:
        raise InputError(
            "mask", f"{where} has no fully transparent pixel, so nothing would be edited"
        )


def _as_png(path: Path, data: bytes, max_bytes: int) -> ImagePart:
    out = io.BytesIO()
    try:
        with _pillow(io.BytesIO(data)) as im:
            # The PNG has no orientation tag, so bake the rotation viewers show into the pixels.
            upright = ImageOps.exif_transpose(im)
            if upright.mode not in _PNG_MODES:
                upright = upright.convert("RGBA" if "A" in upright.getbands() else "RGB")
            upright.save(out, "PNG")
    except _BadImage as exc:
        raise InputError("image", f"{path.absolute()} {exc.reason}") from exc
    size = out.getbuffer().nbytes
    if size > max_bytes:
        raise InputError(
            "image",
            f"{path.absolute()} converted to PNG (to match the mask) is {_mb(size)}, "
            f"over the {_mb(max_bytes)} limit",
        )
    return ImagePart(path.with_suffix(".png").name, "image/png", out.getvalue())


def _content_type(fmt: str) -> str:
    return Image.MIME.get(fmt, "application/octet-stream")


def _png_only(where: Path) -> Callable[[_Info], None]:
    def rule(info: _Info) -> None:
        if info.format != "PNG":
            raise InputError("mask", f"{where} is {info.format}; a mask must be a PNG")

    return rule


def _examine(
    data: bytes, rules: Callable[[_Info], None] | None = None, decode: bool = True
) -> _Info:
    """Open the image once: read its header (format, size, orientation, no pixels), let
    `rules` refuse it from that alone (before a bomb's pixels are decoded), then make sure
    the whole file is there and sound, as cheaply as is sure (`decode=False`: a PNG's
    chunks only, other formats not at all). _BadImage if it is not."""
    buf = io.BytesIO(data)
    # A PNG (most datasets' format) is opened as one without Pillow trying its other
    # formats' signatures first: a tenth of validate's time per image.
    with _pillow(buf, _PNG_ONLY if data.startswith(_PNG_SIGNATURE) else None) as im:
        if im.format is None:
            raise _BadImage("is not an image (or a format Pillow cannot read)")
        # PNG keeps eXIf wherever it likes, so getexif() would decode every pixel to find it;
        # orientation only matters for the JPEG/WEBP that get converted anyway.
        exif = im.getexif() if im.format != "PNG" else {}
        orientation = exif.get(ExifTags.Base.Orientation, 1)
        info = _Info(im.format, im.width, im.height, int(orientation))
        if rules is not None:
            rules(info)
        if info.format == "PNG":
            # Every chunk's CRC without inflating the pixels; stops just short of IEND's CRC.
            im.verify()
            if buf.read(4) != _IEND_CRC:
                raise _BadImage("is truncated or corrupt (IEND chunk incomplete)")
            return info
        if not decode:
            return info
        if info.format == "JPEG":
            # Scaled decoding still reads every entropy-coded byte, so a cut file still fails,
            # but holds an eighth of the width and height in memory.
            im.draft(None, (max(1, im.width // 8), max(1, im.height // 8)))
        im.load()
    return info


@contextmanager
def _pillow(buf: io.BytesIO, formats: tuple[str, ...] | None = None) -> Iterator[Image.Image]:
    """Open an image, turning whatever Pillow raises for bad bytes into _BadImage."""
    try:
        with Image.open(buf, formats=formats) as im:
            yield im
    except (_BadImage, InputError):  # ours: a rule refused what the header says
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _BadImage(
            f"has too many pixels to decode safely (decompression bomb?): {exc}"
        ) from exc
    except UnidentifiedImageError as exc:
        raise _BadImage("is not an image (or a format Pillow cannot read)") from exc
    # Pillow's plugins raise OSError, SyntaxError, ValueError, struct.error, EOFError and more
    # for damaged files; none of them should reach the caller as anything but bad input.
    except Exception as exc:
        raise _BadImage(f"is truncated or corrupt ({type(exc).__name__}: {exc})") from exc
