"""The fake Venice behaves like the API in PROVIDERS.md §3: both routes and request shapes,
binary replies with Venice's headers, prices and balance, the three 402 shapes, the rate
limit, the abuse lock-out and SIGN-IN-WITH-X. Time is an injected clock: nothing sleeps."""

from __future__ import annotations

import base64
import io
import json
import os
import select
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from eth_account import Account
from PIL import Image

from runner.dialects.venice.siwx import SiwxSigner
from runner.testing import VENICE_FAULTS, FakeVenice, VeniceRequest

KEY = "test-key"
SIZE = (256, 256)  # exactly Venice's minimum of 65,536 pixels
PROJECT_ROOT = Path(__file__).resolve().parents[2]
START = 1_795_000_000.0  # 2026-11-19, a plausible "now" for the SIWX timestamps
_NO_TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def png(size: tuple[int, int] = SIZE, blue: int = 90) -> bytes:
    img = Image.new("RGB", size)
    img.putdata(
        [((x * 4) % 256, (y * 5) % 256, blue) for y in range(size[1]) for x in range(size[0])]
    )
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def mask_png(size: tuple[int, int] = SIZE) -> bytes:
    img = Image.new("RGBA", size, (0, 0, 0, 255))
    img.paste((0, 0, 0, 0), (64, 64, 128, 128))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


IMAGE = png()
MASK = mask_png()
PROMPT = "paint the square red"


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def client_for(fake: FakeVenice, headers: dict[str, str] | None = None) -> httpx.Client:
    return httpx.Client(base_url=fake.base_url, headers=headers or {}, timeout=5.0, verify=_NO_TLS)


def edit_json(client: httpx.Client, **body: Any) -> httpx.Response:
    payload = {"image": b64(IMAGE), "prompt": PROMPT, "model": "firered-image-edit", **body}
    return client.post("/image/edit", json=payload)


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert isinstance(body["error"], str)  # Venice: `error` is a string, not an object
    return body


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fake(clock: Clock) -> Iterator[FakeVenice]:
    with FakeVenice(clock=clock, balance_usd=10.0) as provider:
        yield provider


@pytest.fixture
def client(fake: FakeVenice) -> Iterator[httpx.Client]:
    with client_for(fake, {"Authorization": f"Bearer {KEY}"}) as c:
        yield c


# ----------------------------------------------------------------------------- /image/edit


def test_json_edit_returns_png_bytes_with_venice_headers(
    fake: FakeVenice, client: httpx.Client
) -> None:
    response = edit_json(client)

    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content == FakeVenice.edited_image(IMAGE)
    assert response.content != IMAGE
    assert Image.open(io.BytesIO(response.content)).size == SIZE
    headers = response.headers
    assert headers["x-venice-model-id"] == "firered-image-edit"
    assert headers["x-venice-is-content-violation"] == "false"
    assert headers["x-venice-balance-usd"] == "10"  # before this request
    assert headers["x-venice-balance-diem"] == "0"
    assert "x-balance-remaining" not in headers  # x402 wallets only
    assert "x-venice-enhanced-prompt" not in headers
    assert headers["x-venice-version"]
    assert headers["x-ratelimit-limit-requests"] == "20"
    assert headers["x-ratelimit-remaining-requests"] == "19"
    assert headers["x-ratelimit-reset-requests"] == str(int(START) + 60)

    second = edit_json(client)
    assert second.headers["x-venice-balance-usd"] == "9.96"
    assert second.headers["cf-ray"] != headers["cf-ray"]
    assert fake.balance_usd == pytest.approx(9.92)
    assert fake.spent_usd == pytest.approx(0.08)

    [first, _] = fake.requests
    assert isinstance(first, VeniceRequest)
    assert first.path == "/api/v1/image/edit"
    assert first.kind == "json"
    assert first.fields == {"prompt": PROMPT, "model": "firered-image-edit"}
    assert first.images == 1
    assert first.auth == "api_key"
    assert first.request_id == headers["cf-ray"]
    assert first.charged_usd == pytest.approx(0.04)
    fp = FakeVenice.fingerprint(IMAGE, None, PROMPT, "firered-image-edit")
    assert first.fingerprint == fp
    assert fake.paid == {fp: 2}
    assert fake.received == {fp: 2}
    assert fake.requests_total == 2
    assert fake.status_counts == {200: 2}


def test_multipart_edit_with_jpeg_output_and_data_url_json(
    fake: FakeVenice, client: httpx.Client
) -> None:
    response = client.post(
        "/image/edit",
        data={"prompt": PROMPT, "model": "firered-image-edit", "output_format": "jpg"},
        files={"image": ("in.png", IMAGE, "image/png")},
    )

    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(response.content)).format == "JPEG"
    assert response.content == FakeVenice.edited_image(IMAGE, None, "jpeg")
    recorded = fake.requests[-1]
    assert recorded.kind == "multipart"
    assert recorded.fields["output_format"] == "jpg"
    assert recorded.images == 1

    as_data_url = edit_json(client, image="data:image/png;base64," + b64(IMAGE))
    assert as_data_url.content == FakeVenice.edited_image(IMAGE)


@pytest.mark.parametrize(
    ("extra", "content_type", "image_format"),
    [
        ({"resolution": "2K"}, "image/jpeg", "JPEG"),  # 2K/4K default to JPEG
        ({"resolution": "2K", "output_format": "png"}, "image/png", "PNG"),
        ({"output_format": "webp"}, "image/webp", "WEBP"),
        ({"resolution": "1K"}, "image/png", "PNG"),
    ],
)
def test_output_format_follows_the_request_and_resolution(
    client: httpx.Client, extra: dict[str, str], content_type: str, image_format: str
) -> None:
    response = edit_json(client, **extra)

    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert Image.open(io.BytesIO(response.content)).format == image_format


@pytest.mark.parametrize("field", ["mask", "modelId", "n"])
def test_edit_rejects_fields_outside_its_schema(
    fake: FakeVenice, client: httpx.Client, field: str
) -> None:
    fake.script = ["server_error"]
    response = edit_json(client, **{field: "x"})

    assert response.status_code == 400
    body = error_of(response)
    assert field in body["details"]["_errors"][0]
    assert fake.spent_usd == 0
    assert list(fake.script) == ["server_error"]  # a rejected request consumes no fault


def test_multipart_mask_file_is_rejected_on_edit(fake: FakeVenice, client: httpx.Client) -> None:
    response = client.post(
        "/image/edit",
        data={"prompt": PROMPT},
        files=[("image", ("in.png", IMAGE, "image/png")), ("mask", ("m.png", MASK, "image/png"))],
    )

    assert response.status_code == 400
    assert "'mask'" in error_of(response)["details"]["_errors"][0]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "no-such-model"}, 404, "MODEL_NOT_FOUND"),
        ({"image": b64(b"not an image")}, 400, "CORRUPTED_IMAGE"),
        ({"image": b64(png((200, 200)))}, 400, "IMAGE_TOO_SMALL"),
    ],
)
def test_edit_refuses_what_venice_refuses(
    fake: FakeVenice, client: httpx.Client, body: dict[str, str], status: int, code: str
) -> None:
    response = edit_json(client, **body)

    assert response.status_code == status
    assert error_of(response)["code"] == code
    assert fake.requests[-1].code == code
    assert fake.spent_usd == 0


def test_prompt_limit_aspect_ratio_and_resolution_come_from_the_catalogue(
    client: httpx.Client,
) -> None:
    too_long = edit_json(client, prompt="x" * 1501)
    assert too_long.status_code == 400
    assert "1500" in error_of(too_long)["details"]["prompt"]["_errors"][0]
    assert edit_json(client, prompt="x" * 1500).status_code == 200

    assert edit_json(client, aspect_ratio="21:9").status_code == 400
    assert edit_json(client, aspect_ratio="4:5").status_code == 200
    assert edit_json(client, resolution="4K").status_code == 400


def test_wrong_content_type_is_415(client: httpx.Client) -> None:
    response = client.post("/image/edit", content=b"hello", headers={"Content-Type": "text/plain"})

    assert response.status_code == 415
    assert error_of(response)["code"] == "INVALID_CONTENT_TYPE"


# ----------------------------------------------------------------------------- /image/multi-edit


def test_json_multi_edit_uses_the_second_image_as_mask_and_charges_extra_images(
    fake: FakeVenice, client: httpx.Client
) -> None:
    response = client.post(
        "/image/multi-edit",
        json={"images": [b64(IMAGE), b64(MASK)], "modelId": "qwen-image-3-edit", "prompt": PROMPT},
    )

    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content == FakeVenice.edited_image(IMAGE, MASK)
    assert response.content != FakeVenice.edited_image(IMAGE)
    assert response.headers["x-venice-model-id"] == "qwen-image-3-edit"
    recorded = fake.requests[-1]
    assert recorded.path == "/api/v1/image/multi-edit"
    assert recorded.images == 2
    assert recorded.charged_usd == pytest.approx(0.0435)  # $0.04 + one extra $0.0035
    assert fake.balance_usd == pytest.approx(10 - 0.0435)
    fp = FakeVenice.fingerprint(IMAGE, MASK, PROMPT, "qwen-image-3-edit")
    assert recorded.fingerprint == fp
    assert fake.paid == {fp: 1}


def test_multipart_multi_edit_takes_repeated_image_files_up_to_the_model_maximum(
    fake: FakeVenice, client: httpx.Client
) -> None:
    def send(count: int, model: str = "qwen-image-3-edit") -> httpx.Response:
        files = [("images", (f"{i}.png", IMAGE, "image/png")) for i in range(count)]
        return client.post(
            "/image/multi-edit", data={"prompt": PROMPT, "modelId": model}, files=files
        )

    three = send(3)
    assert three.status_code == 200
    assert fake.requests[-1].kind == "multipart"
    assert fake.requests[-1].images == 3
    assert fake.requests[-1].charged_usd == pytest.approx(0.047)

    four = send(4)
    assert four.status_code == 400
    assert "at most 3" in error_of(four)["details"]["images"]["_errors"][0]
    # firered cannot combine images, so its maximum is one.
    assert send(2, "firered-image-edit").status_code == 400
    assert send(1, "firered-image-edit").status_code == 200

    as_text = client.post(
        "/image/multi-edit",
        data={"prompt": PROMPT, "modelId": "qwen-image-3-edit"},
        files=[("images", (None, b64(IMAGE)))],  # a text part: multipart images must be files
    )
    assert as_text.status_code == 400
    assert "file" in error_of(as_text)["error"]


def test_multi_edit_wants_model_id_not_model(client: httpx.Client) -> None:
    body = {"images": [b64(IMAGE)], "prompt": PROMPT}

    missing = client.post("/image/multi-edit", json=body)
    assert missing.status_code == 400
    assert "modelId" in error_of(missing)["details"]
    assert client.post("/image/multi-edit", json={**body, "model": "x"}).status_code == 400
    ok = client.post("/image/multi-edit", json={**body, "modelId": "firered-image-edit"})
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("params", "price"),
    [
        ({}, 0.34),  # no quality: billed as high, at the default 1K
        ({"quality": "low"}, 0.03),
        ({"quality": "medium", "resolution": "2K"}, 0.14),
        ({"quality": "high", "resolution": "4K"}, 0.84),
        ({"quality": "medium", "enhance_prompt": True}, 0.08 + 0.04),
    ],
)
def test_gpt_image_2_is_priced_by_resolution_and_quality(
    fake: FakeVenice, client: httpx.Client, params: dict[str, Any], price: float
) -> None:
    body = {"images": [b64(IMAGE)], "modelId": "gpt-image-2-edit", "prompt": PROMPT, **params}
    response = client.post("/image/multi-edit", json=body)

    assert response.status_code == 200
    assert fake.spent_usd == pytest.approx(price)
    assert fake.requests[-1].charged_usd == pytest.approx(price)


def test_enhance_prompt_costs_four_cents_and_echoes_the_prompt(
    fake: FakeVenice, client: httpx.Client
) -> None:
    prompt = "a cat & a hat"
    response = edit_json(client, prompt=prompt, enhance_prompt=True)

    assert response.status_code == 200
    assert response.headers["x-venice-enhanced-prompt"] == quote(prompt, safe="")
    assert fake.spent_usd == pytest.approx(0.08)


def test_deprecated_model_carries_deprecation_headers(clock: Clock) -> None:
    deprecated = {"firered-image-edit": "qwen-image-3-edit"}
    with (
        FakeVenice(clock=clock, deprecated_models=deprecated) as fake,
        client_for(fake, {"Authorization": f"Bearer {KEY}"}) as client,
    ):
        old = edit_json(client)
        new = edit_json(client, model="qwen-image-3-edit")

    assert old.headers["x-venice-deprecated"] == "true"
    assert old.headers["x-venice-deprecated-replacement"] == "qwen-image-3-edit"
    assert old.headers["x-venice-model-deprecation-date"]
    assert "deprecated" in old.headers["x-venice-model-deprecation-warning"]
    assert "x-venice-deprecated" not in new.headers


# ----------------------------------------------------------------------------- balance, 402


def test_api_key_balance_runs_out_with_the_key_shaped_402(
    fake: FakeVenice, client: httpx.Client
) -> None:
    fake.balance_usd = 0.05
    assert edit_json(client).status_code == 200

    short = edit_json(client)
    assert short.status_code == 402
    assert error_of(short) == {
        "error": "Insufficient USD or Diem balance to complete request",
        "code": "INSUFFICIENT_BALANCE",
    }
    assert short.headers["x-venice-balance-usd"] == "0.01"
    assert fake.balance_usd == pytest.approx(0.01)
    assert fake.requests[-1].charged_usd == 0

    fake.top_up(1.0)
    assert edit_json(client).status_code == 200
    assert fake.balance_usd == pytest.approx(0.97)


def test_key_402_without_code_when_asked(clock: Clock) -> None:
    with (
        FakeVenice(clock=clock, balance_usd=0.0, payment_key_code=False) as fake,
        client_for(fake, {"Authorization": f"Bearer {KEY}"}) as client,
    ):
        response = edit_json(client)

    assert response.status_code == 402
    assert response.json() == {"error": "Insufficient USD or Diem balance to complete request"}


def test_open_fake_without_credentials_runs_out_with_the_x402_discovery_402(
    clock: Clock,
) -> None:
    with (
        FakeVenice(api_key=None, clock=clock, balance_usd=0.05) as fake,
        client_for(fake) as client,
    ):
        assert edit_json(client).status_code == 200
        assert fake.requests[-1].auth == "none"
        short = edit_json(client)

    assert short.status_code == 402
    body = short.json()
    assert body["x402Version"] == 2
    assert isinstance(body["error"], str)
    [accept] = body["accepts"]
    assert accept["scheme"] == "exact"
    assert accept["amount"] == "40000"  # $0.04 in USDC base units
    assert {"network", "asset", "payTo", "maxTimeoutSeconds", "extra"} <= set(accept)
    assert body["resource"]["url"].endswith("/api/v1/image/edit")
    assert "sign-in-with-x" in body["extensions"]
    assert body["authOptions"]["x402Wallet"]["header"] == "SIGN-IN-WITH-X"
    assert body["authOptions"]["x402Wallet"]["legacyHeader"] == "X-Sign-In-With-X"
    assert "apiKey" in body["authOptions"]
    required = json.loads(base64.b64decode(short.headers["PAYMENT-REQUIRED"]))
    assert required["accepts"] == body["accepts"]
    assert required["x402Version"] == 2


def test_missing_credentials_get_the_discovery_402_and_a_wrong_key_401(
    fake: FakeVenice,
) -> None:
    with client_for(fake) as anonymous:
        response = edit_json(anonymous)
    assert response.status_code == 402
    assert "accepts" in response.json()
    assert "PAYMENT-REQUIRED" in response.headers
    assert "x-venice-balance-usd" not in response.headers

    with client_for(fake, {"Authorization": "Bearer wrong"}) as wrong:
        response = edit_json(wrong)
    assert response.status_code == 401
    assert error_of(response)["code"] == "AUTHENTICATION_FAILED"
    assert fake.spent_usd == 0


# ----------------------------------------------------------------------------- SIGN-IN-WITH-X


@pytest.fixture
def signer(clock: Clock) -> SiwxSigner:
    return SiwxSigner(Account.create().key.hex(), env_name="TEST_WALLET_KEY", clock=clock)


@pytest.fixture
def wallet_fake(clock: Clock, signer: SiwxSigner) -> Iterator[FakeVenice]:
    with FakeVenice(api_key=None, wallet=signer.address, clock=clock, balance_usd=0.1) as f:
        yield f


def test_siwx_signed_by_the_wallet_is_accepted_and_recorded(
    wallet_fake: FakeVenice, signer: SiwxSigner
) -> None:
    with client_for(wallet_fake) as client:
        first = client.post(
            "/image/edit",
            json={"image": b64(IMAGE), "prompt": PROMPT},
            headers={"SIGN-IN-WITH-X": signer.header()},
        )
        legacy = client.post(
            "/image/edit",
            json={"image": b64(IMAGE), "prompt": PROMPT},
            headers={"X-Sign-In-With-X": signer.header()},
        )

    assert first.status_code == 200
    assert legacy.status_code == 200
    assert first.headers["x-venice-balance-usd"] == "0.1"
    assert first.headers["x-balance-remaining"] == "0.06"  # after the request
    assert legacy.headers["x-balance-remaining"] == "0.02"
    one, two = wallet_fake.requests
    assert one.auth == two.auth == "wallet"
    assert one.wallet == two.wallet == signer.address
    assert one.nonce and two.nonce and one.nonce != two.nonce
    sent = json.loads(base64.b64decode(one.headers["sign-in-with-x"]))
    assert f"Nonce: {one.nonce}" in sent["message"]
    assert "x-sign-in-with-x" in two.headers


def test_wallet_balance_runs_out_with_the_wallet_shaped_402(
    wallet_fake: FakeVenice, signer: SiwxSigner
) -> None:
    wallet_fake.balance_usd = 0.01
    with client_for(wallet_fake) as client:
        response = client.post(
            "/image/edit",
            json={"image": b64(IMAGE), "prompt": PROMPT},
            headers={"SIGN-IN-WITH-X": signer.header()},
        )

    assert response.status_code == 402
    body = response.json()
    assert body["error"] == "Payment required"
    assert body["code"] == "PAYMENT_REQUIRED"
    assert body["reason"] == "insufficient_balance"
    assert body["currentBalanceUsd"] == pytest.approx(0.01)
    assert body["minimumBalanceUsd"] == pytest.approx(0.04)
    for key in ("message", "suggestedTopUpUsd", "minimumTopUpUsd"):
        assert key in body
    assert body["supportedTokens"] == ["USDC"]
    assert body["supportedChains"] == ["base", "solana"]
    assert set(body["topUpInstructions"]) == {
        "step1",
        "step2",
        "step3",
        "receiverWallet",
        "tokenAddress",
        "tokenDecimals",
        "network",
        "minimumAmountUsd",
    }
    info = body["siwxChallenge"]["info"]
    assert info["domain"] == "api.venice.ai"
    assert {"uri", "version", "nonce", "issuedAt", "expirationTime", "statement"} <= set(info)
    assert body["siwxChallenge"]["supportedChains"]


def test_siwx_from_another_key_expired_or_replayed_is_401(
    wallet_fake: FakeVenice, signer: SiwxSigner, clock: Clock
) -> None:
    stranger = SiwxSigner(Account.create().key.hex(), env_name="OTHER", clock=clock)

    def send(header: str) -> httpx.Response:
        with client_for(wallet_fake) as client:
            return client.post(
                "/image/edit",
                json={"image": b64(IMAGE), "prompt": PROMPT},
                headers={"SIGN-IN-WITH-X": header},
            )

    other = send(stranger.header())
    assert other.status_code == 401
    assert error_of(other)["code"] == "X402_INVALID_SIGN_IN"

    header = signer.header()
    assert send(header).status_code == 200
    replayed = send(header)
    assert replayed.status_code == 401
    assert error_of(replayed)["code"] == "X402_INVALID_SIGN_IN"

    stale = signer.header()
    clock.now += 601  # the sign-in lives 600 s
    expired = send(stale)
    assert expired.status_code == 401
    assert error_of(expired)["code"] == "X402_INVALID_SIGN_IN"
    assert send("bm90IGpzb24=").status_code == 401
    assert send(signer.header()).status_code == 200
    assert wallet_fake.spent_usd == pytest.approx(0.08)
    assert [r.status for r in wallet_fake.requests] == [401, 200, 401, 401, 401, 200]


def test_api_key_is_refused_by_a_wallet_only_fake(wallet_fake: FakeVenice) -> None:
    with client_for(wallet_fake, {"Authorization": f"Bearer {KEY}"}) as client:
        response = edit_json(client)

    assert response.status_code == 401
    assert error_of(response)["code"] == "AUTHENTICATION_FAILED"


# ----------------------------------------------------------------------------- rate limit, lock-out


@pytest.mark.parametrize(("in_ms", "scale"), [(False, 1), (True, 1000)])
def test_rate_limit_answers_429_with_a_unix_reset_time(
    clock: Clock, in_ms: bool, scale: int
) -> None:
    with (
        FakeVenice(clock=clock, rate_limit_per_minute=2, reset_in_ms=in_ms) as fake,
        client_for(fake, {"Authorization": f"Bearer {KEY}"}) as client,
    ):
        assert edit_json(client).status_code == 200
        clock.now += 10
        second = edit_json(client)
        assert second.headers["x-ratelimit-remaining-requests"] == "0"
        limited = edit_json(client)
        assert limited.status_code == 429
        assert error_of(limited)["code"] == "RATE_LIMIT_EXCEEDED"
        assert limited.headers["x-ratelimit-limit-requests"] == "2"
        assert limited.headers["x-ratelimit-remaining-requests"] == "0"
        # The oldest request in the window leaves it at START + 60.
        assert int(limited.headers["x-ratelimit-reset-requests"]) == (int(START) + 60) * scale

        clock.now = START + 60
        assert edit_json(client).status_code == 200
        assert fake.status_counts == {200: 3, 429: 1}


def test_lockout_trips_after_21_failures_and_clears_after_30_s(clock: Clock) -> None:
    with (
        FakeVenice(clock=clock, rate_limit_per_minute=None) as fake,
        client_for(fake, {"Authorization": f"Bearer {KEY}"}) as client,
    ):
        for _ in range(20):
            assert edit_json(client, model="nope").status_code == 404
        assert fake.failures_in_window() == 20
        assert not fake.locked_out
        assert edit_json(client).status_code == 200  # 20 failures are still allowed

        assert edit_json(client, model="nope").status_code == 404  # the 21st
        assert fake.locked_out
        assert fake.lockouts == 1
        locked = edit_json(client)
        assert locked.status_code == 429
        assert error_of(locked)["error"] == (
            "Too many failed attempts (> 20). Please try again later."
        )
        assert fake.spent_usd == pytest.approx(0.04)

        clock.now += 29.9
        assert edit_json(client).status_code == 429
        clock.now += 0.1
        assert not fake.locked_out
        assert edit_json(client).status_code == 200
        assert fake.lockouts == 1


def test_failures_leave_the_lockout_window_after_30_s(clock: Clock) -> None:
    with (
        FakeVenice(
            clock=clock, rate_limit_per_minute=None, lockout_threshold=3, lockout_duration=5.0
        ) as fake,
        client_for(fake, {"Authorization": "Bearer wrong"}) as client,
    ):
        for _ in range(3):
            edit_json(client)
        clock.now += 30
        assert fake.failures_in_window() == 0
        edit_json(client)
        assert fake.lockouts == 0

        for _ in range(3):
            edit_json(client)
        assert fake.lockouts == 1
        assert edit_json(client).json()["error"].startswith("Too many failed attempts (> 3)")
        clock.now += 5
        assert edit_json(client).status_code == 401


# ----------------------------------------------------------------------------- faults


FAULT_REPLIES = {
    "rate_limit": (429, "RATE_LIMIT_EXCEEDED"),
    "model_overloaded": (429, "MODEL_OVERLOADED"),
    "overloaded": (503, "MODEL_AT_CAPACITY"),
    "server_error": (500, "INFERENCE_FAILED"),
    "timeout_504": (504, "REQUEST_TIMEOUT"),
    "payment_key": (402, "INSUFFICIENT_BALANCE"),
    "payment_x402_discovery": (402, None),
    "payment_wallet": (402, "PAYMENT_REQUIRED"),
    "invalid_sign_in": (401, "X402_INVALID_SIGN_IN"),
    "auth": (401, "AUTHENTICATION_FAILED"),
    "content_policy": (422, "CONTENT_POLICY_VIOLATION"),
    "bad_request": (400, None),
    "model_not_found": (404, "MODEL_NOT_FOUND"),
}


def test_every_fault_has_an_expected_reply() -> None:
    assert set(FAULT_REPLIES) == set(VENICE_FAULTS)


@pytest.mark.parametrize("fault", VENICE_FAULTS)
def test_scripted_faults_answer_in_venice_shapes(
    fake: FakeVenice, client: httpx.Client, fault: str
) -> None:
    status, code = FAULT_REPLIES[fault]
    fake.script = [fault, None]
    response = edit_json(client)

    assert response.status_code == status
    body = response.json()
    assert body.get("code") == code
    assert response.headers["cf-ray"]
    if fault == "bad_request":
        assert isinstance(body["error"], str) and "details" in body
    if fault == "payment_x402_discovery":
        assert body["x402Version"] == 2 and "PAYMENT-REQUIRED" in response.headers
    if fault == "rate_limit":
        assert int(response.headers["x-ratelimit-reset-requests"]) >= START
    assert fake.requests[-1].fault == fault
    assert fake.spent_usd == 0
    assert edit_json(client).status_code == 200  # the script's `None` entry
    assert fake.paid.total() == 1


def test_fault_names_are_validated_and_mix_is_seeded(clock: Clock) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        FakeVenice(script=["teapot"])
    with pytest.raises(ValueError, match="unknown fault"):
        FakeVenice(fault_mix={"payment": 0.5})  # an OpenAI fault name

    def statuses(seed: int) -> list[int]:
        mix = {"overloaded": 0.3, "server_error": 0.3}
        with (
            FakeVenice(
                clock=clock,
                fault_mix=mix,
                seed=seed,
                rate_limit_per_minute=None,
                lockout_threshold=99,
            ) as fake,
            client_for(fake, {"Authorization": f"Bearer {KEY}"}) as client,
        ):
            return [edit_json(client).status_code for _ in range(20)]

    assert statuses(1) == statuses(1)
    assert {200, 500, 503} == set(statuses(1))


# ----------------------------------------------------------------------------- catalogue


def test_catalogue_lists_inpaint_models_with_constraints_and_prices(
    fake: FakeVenice, client: httpx.Client
) -> None:
    response = client.get("/models", params={"type": "inpaint"})

    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert body["type"] == "inpaint"
    models = {entry["id"]: entry for entry in body["data"]}
    assert {"firered-image-edit", "qwen-image-3-edit", "gpt-image-2-edit"} <= set(models)
    for entry in models.values():
        assert entry["object"] == "model"
        assert entry["type"] == "inpaint"
        assert entry["model_spec"]["offline"] is False
        assert {"aspectRatios", "promptCharacterLimit", "combineImages"} <= set(
            entry["model_spec"]["constraints"]
        )
    firered = models["firered-image-edit"]["model_spec"]
    assert firered["pricing"]["inpaint"]["usd"] == 0.04
    assert firered["constraints"]["promptCharacterLimit"] == 1500
    assert firered["constraints"]["aspectRatios"] == [
        "auto",
        "1:1",
        "3:2",
        "16:9",
        "9:16",
        "2:3",
        "3:4",
        "4:5",
    ]
    assert firered["constraints"]["resolutions"] == ["1K", "2K"]
    qwen = models["qwen-image-3-edit"]["model_spec"]
    assert qwen["constraints"]["maxInputImages"] == 3
    assert qwen["pricing"]["inputImages"]["additional"]["usd"] == 0.0035
    gpt = models["gpt-image-2-edit"]["model_spec"]
    assert gpt["constraints"]["qualities"] == ["low", "medium", "high"]
    assert gpt["pricing"]["quality"]["2K"]["medium"]["usd"] == 0.14
    assert fake.catalogue_fetches == 1

    with client_for(fake) as anonymous:  # the list is public
        assert anonymous.get("/models", params={"type": "inpaint"}).status_code == 200
    assert fake.catalogue_fetches == 2
    assert fake.requests_total == 0  # catalogue fetches are not edits


def test_catalogue_can_fail_and_can_be_replaced(fake: FakeVenice, client: httpx.Client) -> None:
    fake.catalogue_down = True
    down = client.get("/models", params={"type": "inpaint"})
    assert down.status_code == 503
    assert isinstance(down.json()["error"], str)
    assert fake.catalogue_fetches == 1

    fake.catalogue_down = False
    fake.catalogue = [entry for entry in fake.catalogue if entry["id"] == "qwen-image-3-edit"]
    ids = [e["id"] for e in client.get("/models", params={"type": "inpaint"}).json()["data"]]
    assert ids == ["qwen-image-3-edit"]
    assert edit_json(client).status_code == 404  # firered is no longer served
    assert edit_json(client, model="qwen-image-3-edit").status_code == 200


# ----------------------------------------------------------------------------- command line


def test_importing_the_fakes_does_not_import_eth_account() -> None:
    code = "import sys, runner.testing; print('eth_account' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_command_line_serves_the_venice_dialect() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    argv = [sys.executable, "-m", "runner.testing", "--dialect", "venice", "--api-key", "k"]
    with subprocess.Popen(
        [*argv, "--balance-usd", "1"], stdout=subprocess.PIPE, cwd=PROJECT_ROOT, env=env, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 10.0)
            assert ready, "the fake printed no base URL"
            base_url = proc.stdout.readline().strip()
            assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/api/v1")
            with httpx.Client(base_url=base_url, headers={"Authorization": "Bearer k"}) as client:
                response = edit_json(client)
            assert response.status_code == 200
            assert response.headers["x-venice-balance-usd"] == "1"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=5.0) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
