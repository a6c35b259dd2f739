"""The "edit" every fake performs: a deterministic tint of the masked area, LRU-cached.

Benchmarks send one large image thousands of times, so finished edits are kept by the
digests of their inputs and a burst of identical first requests renders only once.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import io
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from PIL import Image, ImageChops, ImageFilter

__all__ = [
    "CACHE_SIZE",
    "Edit",
    "EditCache",
    "OutputFormat",
    "digest",
    "edit",
    "edited_image",
    "edited_image_as",
    "fingerprint",
    "render_edit",
]

CACHE_SIZE = 64

OutputFormat = Literal["png", "jpeg", "webp"]

# Index i of a reply is tinted with _TINTS[i % len]: distinct colours let a test tell the
# images of an n > 1 reply apart.
_TINTS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0),
    (0, 0, 255),
    (0, 255, 0),
    (255, 0, 255),
    (0, 255, 255),
    (255, 255, 0),
)
_TINT_STRENGTH = 0.6
_OUTLINE_WIDTH = 2
_JPEG_QUALITY = 90

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Edit:
    png: bytes
    b64: bytes  # ASCII base64 of `png`, spliced straight into JSON replies


class EditCache(Generic[K, V]):
    """LRU of finished edits; `get` builds a missing entry once however many ask for it."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: collections.OrderedDict[K, V] = collections.OrderedDict()
        self._lock = threading.Lock()
        # One lock per key being built, so a burst of identical first requests decodes
        # and encodes the image once instead of once per thread.
        self._building: dict[K, threading.Lock] = {}

    def _lookup(self, key: K) -> V | None:
        hit = self._data.get(key)
        if hit is not None:
            self._data.move_to_end(key)
        return hit

    def get(self, key: K, build: Callable[[], V]) -> V:
        with self._lock:
            hit = self._lookup(key)
            if hit is not None:
                return hit
            key_lock = self._building.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                hit = self._lookup(key)
            if hit is not None:
                return hit
            try:
                value = build()
                with self._lock:
                    self._data[key] = value
                    while len(self._data) > self._size:
                        self._data.popitem(last=False)
            finally:
                with self._lock:
                    self._building.pop(key, None)
        return value


_png_cache: EditCache[tuple[bytes, bytes, int], Edit] = EditCache(CACHE_SIZE)
_encoded_cache: EditCache[tuple[bytes, bytes, str], bytes] = EditCache(CACHE_SIZE)


def digest(data: bytes | None) -> bytes:
    return b"" if data is None else hashlib.sha256(data).digest()


def fingerprint(image_digest: bytes, mask_digest: bytes | None, prompt: str, model: str) -> str:
    """sha256 hex of one edit's inputs (image and mask by digest, then prompt and model)."""
    h = hashlib.sha256()
    # Length-prefixed pieces so that no two different inputs hash the same bytes.
    for piece in (
        image_digest,
        b"\x00" if mask_digest is None else b"\x01" + mask_digest,
        prompt.encode("utf-8"),
        model.encode("utf-8"),
    ):
        h.update(len(piece).to_bytes(8, "big"))
        h.update(piece)
    return h.hexdigest()


def render_edit(image: bytes, mask: bytes | None, index: int) -> bytes:
    with Image.open(io.BytesIO(image)) as src:
        src.load()
        keep_alpha = src.has_transparency_data
        base = src.convert("RGBA" if keep_alpha else "RGB")
    rgb = base.convert("RGB") if keep_alpha else base
    size = rgb.size

    if mask is None:
        width, height = size
        region = Image.new("L", size, 0)
        region.paste(255, (width // 4, height // 4, width - width // 4, height - height // 4))
    else:
        with Image.open(io.BytesIO(mask)) as mask_img:
            mask_img.load()
            if mask_img.size != size:
                raise ValueError(
                    f"mask size {mask_img.size[0]}x{mask_img.size[1]} does not match "
                    f"image size {size[0]}x{size[1]}"
                )
            alpha = mask_img.convert("RGBA").getchannel("A")
        # OpenAI semantics: fully transparent mask pixels are the area to edit.
        region = alpha.point([255] + [0] * 255)

    colour = _TINTS[index % len(_TINTS)]
    tinted = Image.blend(rgb, Image.new("RGB", size, colour), _TINT_STRENGTH)
    # The outline sits on the inner edge of the region so nothing outside it changes.
    eroded = region.filter(ImageFilter.MinFilter(2 * _OUTLINE_WIDTH + 1))
    tinted.paste(colour, (0, 0, *size), ImageChops.subtract(region, eroded))
    out = Image.composite(tinted, rgb, region)
    if keep_alpha:
        out.putalpha(base.getchannel("A"))

    buf = io.BytesIO()
    # Level 1: the replies are mostly noise in benchmarks, and higher levels only cost time.
    out.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def edit(image: bytes, image_digest: bytes, mask: bytes | None, index: int) -> Edit:
    def build() -> Edit:
        png = render_edit(image, mask, index)
        return Edit(png, base64.b64encode(png))

    return _png_cache.get((image_digest, digest(mask), index), build)


def edited_image(image: bytes, mask: bytes | None, index: int = 0) -> bytes:
    """The PNG the fake returns as image `index` for these inputs (deterministic).

    Pixels where the mask is fully transparent (or, without a mask, the centred rectangle
    covering the middle half) are blended 60% with a colour chosen by `index` and get a
    2-pixel outline on their inner edge; every other pixel is left exactly as it was.
    Raises ValueError when the mask's size differs from the image's, and Pillow's errors
    when either does not decode.
    """
    return edit(image, digest(image), mask, index).png


def _encode(png: bytes, fmt: OutputFormat) -> bytes:
    if fmt == "png":
        return png
    with Image.open(io.BytesIO(png)) as img:
        img.load()
        buf = io.BytesIO()
        if fmt == "jpeg":
            img.convert("RGB").save(buf, format="JPEG", quality=_JPEG_QUALITY)
        else:
            img.save(buf, format="WEBP", quality=_JPEG_QUALITY)
    return buf.getvalue()


def edited_image_as(image: bytes, mask: bytes | None, fmt: OutputFormat = "png") -> bytes:
    """`edited_image(image, mask, 0)` encoded as `fmt` (JPEG drops any alpha channel)."""
    image_digest = digest(image)
    return _encoded_cache.get(
        (image_digest, digest(mask), fmt),
        lambda: _encode(edit(image, image_digest, mask, 0).png, fmt),
    )
