"""Inputs read again from their files as they are sent (files/uploads.py): the same bytes
on the wire as before, and a file changed since pre-flight never sent whole; or, for a
first send, the bytes pre-flight checked, held within a run-wide allowance."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from PIL import Image

from runner.dialects.openai.client import OpenAIProvider
from runner.dialects.openai.rules import LIMITS as OPENAI_LIMITS
from runner.errors import InputChanged
from runner.files.preflight import prepare_request
from runner.files.uploads import (
    SEND_CHUNK_BYTES,
    FileUpload,
    ReadAhead,
    part_bytes,
    upload_body,
)
from runner.records import ImagePart, JobSpec
from runner.testing import FakeProvider

BOUNDARY = "runner-test-boundary"
URL = "http://provider.test/v1/images/edits"


def noise_png(path: Path, side: int = 200) -> Path:
    """~120 KB at 200 pixels a side, an upload of one chunk; ~480 KB at 400, of two."""
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(path, "PNG")
    return path


def queued(image: Path) -> JobSpec:
    return JobSpec(
        key="ab" * 32,
        entry=0,
        image=image,
        mask=None,
        prompt="paint it blue",
        provider="fake",
        model="gpt-image-1",
        params={},
        output_dir=image.parent / "out",
        output_name="{stem}-{key8}.{ext}",
        image_sha256=hashlib.sha256(image.read_bytes()).hexdigest(),
    )


def checked_part(image: Path) -> ImagePart:
    part = prepare_request(queued(image), OPENAI_LIMITS).image
    assert part.source is not None and part.data == b""  # its bytes were let go
    return part


def multipart(body: Any) -> httpx.Request:  # bytes, or a FileUpload (not an IO[bytes])
    return httpx.Request(
        "POST",
        URL,
        data={"prompt": "paint it blue", "model": "gpt-image-1"},
        files=[("image", ("a.png", body, "image/png"))],
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )


def streamed(request: httpx.Request) -> tuple[bytes, InputChanged | None]:
    """What the request's body gives before it ends or is cut off."""
    sent = bytearray()
    try:
        for chunk in request.stream:  # type: ignore[union-attr]
            sent += chunk
    except InputChanged as exc:
        return bytes(sent), exc
    return bytes(sent), None


@pytest.mark.parametrize("side", [200, 400])
def test_a_file_upload_sends_what_the_bytes_would_have_and_starts_over_on_a_retry(
    tmp_path: Path, side: int
) -> None:
    image = noise_png(tmp_path / "a.png", side)
    part = checked_part(image)
    as_bytes = multipart(image.read_bytes())
    from_file = multipart(FileUpload("image", part.source))  # type: ignore[arg-type]

    assert from_file.headers["Content-Length"] == as_bytes.headers["Content-Length"]
    expected, _ = streamed(as_bytes)
    assert streamed(from_file) == (expected, None)
    assert streamed(from_file) == (expected, None)  # read again from the start, hashed anew
    assert part_bytes("image", part) == image.read_bytes()


def _same_size_other_bytes(image: Path) -> None:
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0xFF
    image.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (_same_size_other_bytes, "changed since the job was queued"),
        (lambda p: p.write_bytes(p.read_bytes()[:-70_000]), "is shorter than when it was checked"),
        (
            lambda p: p.write_bytes(p.read_bytes() + b"\0" * 10),
            "is longer than when it was checked",
        ),
        (lambda p: p.unlink(), "cannot read"),
    ],
    ids=["edited", "shorter", "longer", "deleted"],
)
@pytest.mark.parametrize("side", [200, 400])
def test_a_file_changed_after_its_checks_is_cut_off_before_its_last_byte(
    tmp_path: Path, change: object, said: str, side: int
) -> None:
    image = noise_png(tmp_path / "a.png", side)
    whole = image.read_bytes()
    part = checked_part(image)
    request = multipart(FileUpload("image", part.source))  # type: ignore[arg-type]
    length = int(request.headers["Content-Length"])
    change(image)  # type: ignore[operator]

    sent, error = streamed(request)

    assert error is not None and said in str(error) and error.field == "image"
    assert len(sent) < length  # the provider never has the request whole
    assert whole[-1000:] not in sent  # the file's last chunk never left
    with pytest.raises(InputChanged, match=said):
        part_bytes("image", part)  # a JSON body or a batch upload is refused the same way


def test_a_file_goes_out_in_chunks_larger_than_httpx_asks_for(tmp_path: Path) -> None:
    # httpx reads 64 KB at a time, and each chunk is a turn of the event loop and a socket
    # write: a file upload hands it SEND_CHUNK_BYTES at a time instead.
    image = noise_png(tmp_path / "a.png", 600)  # ~1 MB
    size = image.stat().st_size
    request = multipart(FileUpload("image", checked_part(image).source))  # type: ignore[arg-type]

    chunks = [len(chunk) for chunk in request.stream]  # type: ignore[union-attr]

    whole = -(-size // SEND_CHUNK_BYTES)
    file_chunks = [n for n in chunks if n > 1024]  # the form's headers and fields are small
    assert file_chunks == [SEND_CHUNK_BYTES] * (whole - 1) + [size - SEND_CHUNK_BYTES * (whole - 1)]
    assert 4 <= whole < size // 65536  # fewer than httpx's own 64 KB reads would be


def test_bytes_held_in_memory_are_sent_as_they_are() -> None:
    part = ImagePart("a.png", "image/png", b"converted to png")
    assert part_bytes("image", part) == b"converted to png" and part.size == 16


async def test_a_changed_input_never_reaches_the_provider_whole_and_the_next_job_goes(
    tmp_path: Path,
) -> None:
    image = noise_png(tmp_path / "a.png")
    other = noise_png(tmp_path / "b.png")
    changed = prepare_request(queued(image), OPENAI_LIMITS)
    fine = prepare_request(queued(other), OPENAI_LIMITS)
    _same_size_other_bytes(image)
    with FakeProvider(api_key="k") as fake:
        async with httpx.AsyncClient() as client:
            provider = OpenAIProvider("fake", fake.base_url, "k", client)
            with anyio.fail_after(10), pytest.raises(InputChanged, match="changed since"):
                await provider.edit(changed)
            with anyio.fail_after(10):
                result = await provider.edit(fine)  # the client is still good
        paid, received = fake.paid, fake.received

    assert sum(paid.values()) == 1 and sum(received.values()) == 1  # only the fine one
    (reply,) = result.images
    assert Image.open(io.BytesIO(reply.data)).size == (200, 200)


def test_a_first_send_takes_the_bytes_pre_flight_checked_and_a_resend_reads_the_file(
    tmp_path: Path,
) -> None:
    image = noise_png(tmp_path / "a.png", 400)
    whole = image.read_bytes()
    allowance = ReadAhead(10 * 2**20)
    part = prepare_request(queued(image), OPENAI_LIMITS, read_ahead=allowance).image
    assert part.held is not None and allowance.room == 10 * 2**20 - len(whole)
    request = multipart(upload_body("image", part))
    expected, _ = streamed(multipart(whole))

    # Changed after its checks: the first send does not read the file, so it sends the
    # bytes that were checked and keyed, and lets them go.
    _same_size_other_bytes(image)
    assert streamed(request) == (expected, None)
    assert allowance.room == 10 * 2**20 and part.held.take() is None

    sent, error = streamed(request)  # sent again (httpx rewinds): from the file, checked
    assert error is not None and "changed since the job was queued" in str(error)
    assert len(sent) < len(expected)


def test_a_send_rewound_halfway_through_held_bytes_reads_the_file_from_the_start(
    tmp_path: Path,
) -> None:
    image = noise_png(tmp_path / "a.png", 600)  # several chunks
    whole = image.read_bytes()
    part = prepare_request(queued(image), OPENAI_LIMITS, read_ahead=ReadAhead()).image
    upload = FileUpload("image", part.source, part.held)  # type: ignore[arg-type]
    assert upload.read(65536) == whole[:SEND_CHUNK_BYTES]  # from memory
    image.write_bytes(whole[:-10])

    upload.seek(0)
    with pytest.raises(InputChanged, match="is shorter than when it was checked"):
        while upload.read(65536):
            pass


def test_the_allowance_holds_what_fits_and_gets_back_what_is_let_go(tmp_path: Path) -> None:
    a, b = noise_png(tmp_path / "a.png", 400), noise_png(tmp_path / "b.png", 400)
    full = a.stat().st_size + b.stat().st_size - 1
    allowance = ReadAhead(full)
    first = prepare_request(queued(a), OPENAI_LIMITS, read_ahead=allowance)
    second = prepare_request(queued(b), OPENAI_LIMITS, read_ahead=allowance)

    assert first.image.held is not None
    assert second.image.held is None  # no room left: its send reads the file, as before
    assert (
        streamed(multipart(upload_body("image", second.image)))[0]
        == streamed(multipart(b.read_bytes()))[0]
    )
    first.let_go()  # the job ended without sending it
    assert allowance.room == full and first.image.held.take() is None

    third = prepare_request(queued(b), OPENAI_LIMITS, read_ahead=allowance)
    assert third.image.held is not None
    assert part_bytes("image", third.image) == b.read_bytes()  # a JSON body takes them too
    assert allowance.room == full
