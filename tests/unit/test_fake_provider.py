"""The fake provider behaves like the API the runner is written against, faults included."""

from __future__ import annotations

import base64
import http.client
import io
import os
import select
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import png_bytes
from PIL import Image, ImageChops

from runner.testing import FAULTS, FakeProvider, edited_image

KEY = "test-key"
SIZE = (64, 48)
HOLE = (16, 12, 40, 30)  # the transparent (to be edited) rectangle of the mask
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def png(size: tuple[int, int] = SIZE) -> bytes:
    return png_bytes(size, gradient=True)


def mask_png(size: tuple[int, int] = SIZE, hole: tuple[int, int, int, int] = HOLE) -> bytes:
    img = Image.new("RGBA", size, (0, 0, 0, 255))
    img.paste((0, 0, 0, 0), hole)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


IMAGE = png()
MASK = mask_png()


def edit(
    client: httpx.Client,
    *,
    image: bytes = IMAGE,
    mask: bytes | None = MASK,
    prompt: str = "paint the hole red please",
    model: str = "gpt-image-1",
    image_field: str = "image",
    **fields: str,
) -> httpx.Response:
    files: list[tuple[str, tuple[str, bytes, str]]] = [
        (image_field, ("in.png", image, "image/png"))
    ]
    if mask is not None:
        files.append(("mask", ("mask.png", mask, "image/png")))
    return client.post(
        "/images/edits", data={"prompt": prompt, "model": model, **fields}, files=files
    )


def decode(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert img.format == "PNG"
    return img


# Only plain http here: one bare context spares every client loading the CA bundle (~50 ms).
_NO_TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def make_client(
    target: FakeProvider | str, *, key: str | None = KEY, timeout: httpx.Timeout | float = 5.0
) -> httpx.Client:
    base_url = target if isinstance(target, str) else target.base_url
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.Client(base_url=base_url, headers=headers, timeout=timeout, verify=_NO_TLS)


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        yield provider


@pytest.fixture
def client(fake: FakeProvider) -> Iterator[httpx.Client]:
    with make_client(fake) as c:
        yield c


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    return error


# ----------------------------------------------------------------------------- success


def test_edit_returns_n_pngs_with_usage_and_request_id(
    fake: FakeProvider, client: httpx.Client
) -> None:
    prompt = "x" * 41
    response = edit(client, prompt=prompt, n="3")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"] == "req_1"
    assert response.headers["x-ratelimit-remaining-requests"] == "1000"
    body = response.json()
    assert isinstance(body["created"], int)
    assert len(body["data"]) == 3
    images = [base64.b64decode(item["b64_json"]) for item in body["data"]]
    assert images == [edited_image(IMAGE, MASK, i) for i in range(3)]
    assert len(set(images)) == 3
    assert all(decode(item["b64_json"]).size == SIZE for item in body["data"])
    assert body["usage"] == {
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 765 * 2 + 10 + 1056 * 3,
        "input_tokens": 765 * 2 + 10,
        "output_tokens": 1056 * 3,
        "input_tokens_details": {
            "image_tokens": 1530,
            "text_tokens": 10,
            "cached_tokens_details": {},
        },
        "prompt_tokens_details": {"cached_tokens_details": {}},
        "completion_tokens_details": {},
        "claude_cache_creation_5_m_tokens": 0,
        "claude_cache_creation_1_h_tokens": 0,
    }
    assert edit(client, mask=None, prompt="ab").json()["usage"]["input_tokens"] == 765 + 1
    assert edit(client).headers["x-request-id"] == "req_3"


def test_edit_changes_pixels_inside_the_mask_only() -> None:
    out = Image.open(io.BytesIO(edited_image(IMAGE, MASK, 0))).convert("RGB")
    src = Image.open(io.BytesIO(IMAGE)).convert("RGB")

    assert ImageChops.difference(out, src).getbbox() == HOLE
    left, top, right, bottom = HOLE
    inside = [(x, y) for x in range(left, right) for y in range(top, bottom)]
    assert all(out.getpixel(p) != src.getpixel(p) for p in inside)
    # Index 0 tints red: every edited pixel gains red and loses blue.
    centre = ((left + right) // 2, (top + bottom) // 2)
    before, after = src.getpixel(centre), out.getpixel(centre)
    assert isinstance(before, tuple) and isinstance(after, tuple)
    assert after[0] > before[0] and after[2] < before[2]
    # The outline is the pure tint colour on the inner edge.
    assert out.getpixel((left, top)) == (255, 0, 0)
    assert out.getpixel(centre) != (255, 0, 0)


def test_edit_without_mask_tints_the_middle_half_and_keeps_alpha() -> None:
    rgba = Image.new("RGBA", (40, 20), (0, 0, 0, 128))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    out = Image.open(io.BytesIO(edited_image(buf.getvalue(), None, 1)))

    assert out.mode == "RGBA"
    assert out.getchannel("A").getextrema() == (128, 128)
    diff = ImageChops.difference(out.convert("RGB"), rgba.convert("RGB"))
    assert diff.getbbox() == (10, 5, 30, 15)
    assert out.getpixel((20, 10)) == (0, 0, 153, 128)  # index 1: 60% blue over black


def test_edited_image_is_deterministic_and_rejects_a_mismatched_mask() -> None:
    assert edited_image(IMAGE, MASK, 2) == edited_image(IMAGE, MASK, 2)
    assert edited_image(IMAGE, MASK, 0) != edited_image(IMAGE, MASK, 1)
    with pytest.raises(ValueError, match="does not match"):
        edited_image(IMAGE, mask_png((10, 10), (0, 0, 5, 5)), 0)


# ----------------------------------------------------------------------------- requests


def test_multipart_fields_are_recorded_and_image_array_name_is_accepted(
    fake: FakeProvider, client: httpx.Client
) -> None:
    response = edit(client, image_field="image[]", mask=None, quality="high", size="64x48")

    assert response.status_code == 200
    [recorded] = fake.requests
    assert recorded.fields == {
        "prompt": "paint the hole red please",
        "model": "gpt-image-1",
        "quality": "high",
        "size": "64x48",
    }
    assert recorded.files == {"image[]": ("in.png", "image/png", len(IMAGE))}
    assert recorded.headers["authorization"] == f"Bearer {KEY}"
    assert recorded.status == 200
    assert recorded.fingerprint == FakeProvider.fingerprint(
        IMAGE, None, "paint the hole red please", "gpt-image-1"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"content": b"not multipart", "headers": {"Content-Type": "text/plain"}}, "multipart"),
        (
            {
                "content": b"--b\r\nContent-Disposition: form-data; name=prompt\r\n\r\nhi",
                "headers": {"Content-Type": "multipart/form-data; boundary=b"},
            },
            "terminated",
        ),
        ({"data": {"prompt": "no image"}, "files": {"other": ("a", b"x")}}, "'image'"),
        ({"data": {"model": "m"}, "files": {"image": ("a.png", IMAGE)}}, "'prompt'"),
        ({"data": {"prompt": "p", "n": "11"}, "files": {"image": ("a.png", IMAGE)}}, "'n'"),
        ({"data": {"prompt": "p"}, "files": {"image": ("a.png", b"not a png")}}, "Invalid image"),
    ],
)
def test_bad_requests_get_400_invalid_request(
    fake: FakeProvider, client: httpx.Client, kwargs: dict[str, Any], message: str
) -> None:
    response = client.post("/images/edits", **kwargs)

    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_request"
    assert message in error["message"]
    assert fake.paid == {}
    # The connection stays usable after an error reply.
    assert edit(client).status_code == 200


def test_unknown_paths_get_a_json_404(client: httpx.Client) -> None:
    for response in (client.get("/models"), client.post("/chat/completions", json={})):
        assert response.status_code == 404
        assert error_of(response)["code"] == "not_found"


def test_keep_alive_serves_several_requests_on_one_connection(fake: FakeProvider) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", httpx.URL(fake.base_url).port)
    try:
        socks = []
        for _ in range(3):
            conn.request("GET", "/nope")
            response = conn.getresponse()
            assert response.status == 404
            response.read()
            socks.append(conn.sock)
        assert socks[0] is not None and all(s is socks[0] for s in socks)
    finally:
        conn.close()


def test_stop_closes_idle_keep_alive_connections(fake: FakeProvider) -> None:
    def handlers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("FakeProvider-conn:")]

    conn = http.client.HTTPConnection("127.0.0.1", httpx.URL(fake.base_url).port)
    try:
        conn.request("GET", "/nope")
        conn.getresponse().read()
        assert handlers()  # the connection's thread waits for its next request

        started = time.monotonic()
        fake.stop()
        assert time.monotonic() - started < 1.0
        assert handlers() == []
        assert conn.sock is not None
        assert conn.sock.recv(1) == b""  # the server hung up
    finally:
        conn.close()


def test_auth_is_enforced(fake: FakeProvider, client: httpx.Client) -> None:
    for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": ""}):
        response = client.post(
            "/images/edits",
            data={"prompt": "p"},
            files={"image": ("a.png", IMAGE)},
            headers=headers,
        )
        assert response.status_code == 401
        assert error_of(response)["code"] == "invalid_api_key"
    # Credentials are checked before the body is judged.
    assert client.post("/images/edits", headers={"Authorization": "Bearer x"}).status_code == 401
    assert fake.paid == {}
    assert edit(client).status_code == 200

    with (
        FakeProvider(api_key=None) as open_fake,
        make_client(open_fake, key=None) as anonymous,
    ):
        assert edit(anonymous).status_code == 200


def test_latency_delays_each_reply(fake: FakeProvider, client: httpx.Client) -> None:
    fake.latency = 0.2
    started = time.monotonic()
    assert edit(client).status_code == 200
    assert time.monotonic() - started >= 0.2


# ----------------------------------------------------------------------------- faults

JSON_FAULTS = [
    ("rate_limit", 429, "rate_limit_error", "rate_limit_exceeded"),
    ("server_error", 500, "comet_api_error", ""),
    ("overloaded", 503, "server_error", "server_is_overloaded"),
    ("payment", 402, "comet_api_error", "insufficient_user_quota"),
    ("quota_429", 429, "insufficient_quota", "insufficient_quota"),
    ("auth", 401, "invalid_request_error", "invalid_api_key"),
    ("bad_request", 400, "invalid_request_error", "invalid_request"),
    ("moderation", 400, "image_generation_user_error", "moderation_blocked"),
]


@pytest.mark.parametrize(("fault", "status", "type_", "code"), JSON_FAULTS)
def test_json_faults_send_their_status_and_envelope(
    fake: FakeProvider, client: httpx.Client, fault: str, status: int, type_: str, code: str
) -> None:
    fake.script = [fault]
    response = edit(client)

    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"] == "req_1"
    error = error_of(response)
    assert (error["type"], error["code"], error["param"]) == (type_, code, "")
    assert ("retry-after" in response.headers) == (fault == "rate_limit")
    assert fake.status_counts == {status: 1}
    assert fake.paid == {}
    # The script is used up: the next request is a normal one.
    assert edit(client).status_code == 200


def test_fault_messages_name_the_request() -> None:
    with (
        FakeProvider(script=["server_error", "payment", "quota_429"]) as fake,
        make_client(fake) as client,
    ):
        messages = [error_of(edit(client))["message"] for _ in range(3)]
    assert messages[0] == "upstream error (request id: req_1)"
    assert messages[1] == (
        "user quota is not enough: top up at https://www.cometapi.com/console/topup "
        "(request id: req_2)"
    )
    assert messages[2].startswith("You exceeded your current quota")


@pytest.mark.parametrize(
    ("retry_after", "header"), [(0.0, "0"), (2, "2"), (1.5, "1.5"), (None, None)]
)
def test_rate_limit_retry_after_header(retry_after: float | None, header: str | None) -> None:
    with (
        FakeProvider(script=["rate_limit"], retry_after=retry_after) as fake,
        make_client(fake) as client,
    ):
        response = edit(client)
    assert response.status_code == 429
    assert response.headers.get("retry-after") == header


def test_reset_drops_the_connection_without_a_reply(
    fake: FakeProvider, client: httpx.Client
) -> None:
    fake.script = ["reset"]
    # ReadError is ECONNRESET: an orderly close (FIN) would surface as RemoteProtocolError.
    with pytest.raises(httpx.ReadError):
        edit(client)
    assert fake.requests_total == 1
    assert fake.status_counts == {0: 1}
    assert edit(client).status_code == 200


def test_truncate_sends_half_the_body_then_closes(fake: FakeProvider, client: httpx.Client) -> None:
    fake.script = ["truncate"]
    with pytest.raises(httpx.RemoteProtocolError):
        edit(client)
    assert fake.status_counts == {200: 1}
    assert fake.paid == {}
    assert edit(client).status_code == 200


def test_empty_200_has_usage_but_no_images(fake: FakeProvider, client: httpx.Client) -> None:
    fake.script = ["empty_200"]
    response = edit(client)
    assert response.status_code == 200
    body = response.json()
    assert body["data"] == []
    assert body["usage"]["output_tokens"] == 1056
    assert fake.paid == {}


def test_html_404_is_not_json(fake: FakeProvider, client: httpx.Client) -> None:
    fake.script = ["html_404"]
    response = edit(client)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert response.text.lstrip().startswith("<!DOCTYPE html>")


def test_slow_outlasts_a_read_timeout_and_stop_interrupts_it(fake: FakeProvider) -> None:
    fake.script = ["slow"]
    with (
        make_client(fake, timeout=httpx.Timeout(5.0, read=0.3)) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        edit(client)
    started = time.monotonic()
    fake.stop()
    assert time.monotonic() - started < 1.0
    assert fake.paid == {}


def test_script_and_fault_mix_names_are_validated(fake: FakeProvider) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        FakeProvider(script=["rate_limit", "teapot"])
    with pytest.raises(ValueError, match="unknown fault"):
        fake.fault_mix = {"teapot": 0.5}
    with pytest.raises(ValueError):
        FakeProvider(fault_mix={"rate_limit": 0.7, "server_error": 0.7})
    # Appending bypasses validation; the fake then says what went wrong.
    fake.script.append("teapot")
    with make_client(fake) as client:
        response = edit(client)
    assert response.status_code == 500
    assert "unknown fault 'teapot'" in error_of(response)["message"]
    assert set(FAULTS) >= {name for name, *_ in JSON_FAULTS}


def test_fault_mix_is_drawn_from_the_seed() -> None:
    def statuses(seed: int) -> list[int]:
        mix = {"rate_limit": 0.3, "server_error": 0.3}
        with (
            FakeProvider(fault_mix=mix, seed=seed) as fake,
            make_client(fake) as client,
        ):
            return [edit(client).status_code for _ in range(30)]

    first = statuses(7)
    assert first == statuses(7)
    assert {200, 429, 500} <= set(first)

    with (
        FakeProvider(fault_mix={"overloaded": 1.0}) as fake,
        make_client(fake) as client,
    ):
        assert {edit(client).status_code for _ in range(5)} == {503}
        fake.fault_mix = None
        assert edit(client).status_code == 200


# ----------------------------------------------------------------------------- payment


def test_payment_after_gives_exactly_k_paid_edits_until_top_up(
    fake: FakeProvider, client: httpx.Client
) -> None:
    fake.payment_after = 2
    assert [edit(client).status_code for _ in range(5)] == [200, 200, 402, 402, 402]
    assert error_of(edit(client))["code"] == "insufficient_user_quota"
    assert sum(fake.paid.values()) == 2

    fake.top_up()
    assert edit(client).status_code == 200
    assert sum(fake.paid.values()) == 3


def test_payment_after_holds_under_concurrency(fake: FakeProvider) -> None:
    fake.payment_after = 3
    fake.latency = 0.05
    statuses: list[int] = []

    def one() -> None:
        with make_client(fake) as c:
            statuses.append(edit(c).status_code)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] * 3 + [402] * 5
    assert sum(fake.paid.values()) == 3


# ----------------------------------------------------------------------------- url replies


def test_url_reply_serves_the_image() -> None:
    with (
        FakeProvider(reply="url") as fake,
        make_client(fake) as client,
    ):
        data = edit(client, n="2").json()["data"]
        assert [set(item) for item in data] == [{"url"}, {"url"}]
        origin = fake.base_url.removesuffix("/v1")
        for index, item in enumerate(data):
            assert item["url"].startswith(f"{origin}/files/")
            got = client.get(item["url"])
            assert got.status_code == 200
            assert got.headers["content-type"] == "image/png"
            assert got.content == edited_image(IMAGE, MASK, index)
        assert client.get(f"{origin}/files/missing.png").status_code == 404


# ----------------------------------------------------------------------------- counters


def test_counters_and_fingerprints(fake: FakeProvider, client: httpx.Client) -> None:
    same = FakeProvider.fingerprint(IMAGE, MASK, "p1", "m")
    other = FakeProvider.fingerprint(IMAGE, MASK, "p2", "m")
    assert same == FakeProvider.fingerprint(IMAGE, MASK, "p1", "m")
    assert len({same, other, FakeProvider.fingerprint(IMAGE, None, "p1", "m")}) == 3
    assert FakeProvider.fingerprint(IMAGE, MASK, "p1", "m2") != same

    fake.script = [None, "rate_limit"]
    for prompt in ("p1", "p1", "p1", "p2"):
        edit(client, prompt=prompt, model="m")

    assert fake.requests_total == 4
    assert fake.received == {same: 3, other: 1}
    assert fake.paid == {same: 2, other: 1}
    assert fake.status_counts == {200: 3, 429: 1}
    assert [r.status for r in fake.requests] == [200, 429, 200, 200]
    assert [r.fault for r in fake.requests] == [None, "rate_limit", None, None]

    fake.reset_counters()
    assert (fake.requests_total, fake.paid, fake.received, fake.status_counts) == (0, {}, {}, {})
    assert fake.requests == []


def test_many_concurrent_keep_alive_clients(fake: FakeProvider) -> None:
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with make_client(fake) as c:
                for _ in range(3):
                    assert edit(c).status_code == 200
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert fake.requests_total == 96
    assert sum(fake.paid.values()) == 96


# ----------------------------------------------------------------------------- command line


def test_command_line_serves_until_sigterm() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runner.testing",
            "--port",
            "0",
            "--latency",
            "0.0",
            "--api-key",
            "k",
        ],
        stdout=subprocess.PIPE,
        cwd=PROJECT_ROOT,
        env=env,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 10.0)
            assert ready, "the fake provider printed no base URL"
            base_url = proc.stdout.readline().strip()
            assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")

            with make_client(base_url, key="k") as client:
                assert edit(client).status_code == 200

            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=5.0) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
