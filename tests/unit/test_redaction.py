"""A provider that sends the key back: every text it returns is redacted at the provider
boundary, and again where text is written (the store, log records). Also odd keys, which
are refused before anything is sent. MockTransport and a real SQLite file; no network."""

from __future__ import annotations

import io
import json
import logging
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from PIL import Image

from runner.dialects.factory import credentials
from runner.dialects.openai.client import OpenAIProvider
from runner.dialects.transfer import AddressPolicy
from runner.dialects.venice.catalogue import load_catalogue
from runner.dialects.venice.client import VeniceProvider
from runner.errors import (
    AuthRejected,
    ManifestError,
    PaymentRequired,
    PermanentJobError,
    ProviderError,
    RetryableError,
)
from runner.manifest.expand import parse_manifest
from runner.records import (
    AttemptRecord,
    EditRequest,
    FailureKind,
    ImagePart,
    Outcome,
    ReplyFacts,
    Usage,
)
from runner.redact import (
    REDACTED,
    forget_secrets,
    protect_handlers,
    redact,
    redact_document,
    register_secret,
)
from runner.store.engine import open_store

KEY = "cmt-9f8e7d6c5b4a39281706"  # not sk- shaped: only the exact match can catch it
WALLET = "0x" + "ab" * 32
BASE = "https://api.gateway.test/v1"
VENICE_BASE = "https://api.venice.test/api/v1"


@pytest.fixture(autouse=True)
def registered() -> Iterator[None]:
    forget_secrets()
    register_secret(KEY)
    yield
    forget_secrets()


def picture(size: tuple[int, int] = (320, 240)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (40, 90, 200)).save(buffer, "PNG")
    return buffer.getvalue()


PNG = picture()


def request(**params: Any) -> EditRequest:
    return EditRequest("m", "make it blue", ImagePart("a.png", "image/png", PNG), None, params)


async def _public(host: str, port: int) -> list[str]:
    return ["93.184.216.34"]


async def openai_edit(answer: Callable[[httpx.Request], httpx.Response]) -> Any:
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        provider = OpenAIProvider(
            "comet", BASE, KEY, client, addresses=AddressPolicy(BASE, resolve=_public)
        )
        try:
            return await provider.edit(request())
        except ProviderError as exc:
            return exc


async def venice_edit(answer: Callable[[httpx.Request], httpx.Response]) -> Any:
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        provider = VeniceProvider("venice", VENICE_BASE, client, api_key=KEY)
        try:
            return await provider.edit(request())
        except ProviderError as exc:
            return exc


def texts(error: ProviderError) -> str:
    """Every text an error carries, as the store, logs and CLI would see them."""
    facts = error.facts or ReplyFacts()
    return " | ".join(
        str(part)
        for part in (
            error,
            error.message,
            error.describe(),
            error.provider_code,
            error.request_id,
            error.usage.raw if error.usage else None,
            facts.served_model,
            facts.deprecation,
        )
    )


# --- the redaction itself -------------------------------------------------------------------


def test_a_registered_secret_is_replaced_wherever_it_appears() -> None:
    text = f"Incorrect API key provided: {KEY}. Key={KEY.upper()} url=/x?key={KEY}&a=1"
    assert redact(text) == (
        f"Incorrect API key provided: {REDACTED}. Key={REDACTED} url=/x?key={REDACTED}&a=1"
    )


def test_encoded_forms_of_a_secret_are_replaced() -> None:
    odd = "abc+def/ghi=jkl"
    register_secret(odd)
    register_secret(WALLET)
    assert odd not in redact(f"k={odd}")
    assert "abc%2Bdef%2Fghi%3Djkl" not in redact("k=abc%2Bdef%2Fghi%3Djkl")
    assert WALLET[2:] not in redact(f"private key {WALLET[2:]} rejected")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Incorrect API key provided: sk-proj-abcdEFGH1234ijkl", f"Incorrect API key provided: sk-{REDACTED}"),
        ("header Authorization: Bearer abc.DEF-123_x~y+z/9== sent", f"header Authorization: Bearer {REDACTED} sent"),
        ('{"auth":"bearer tok3n-value","n":1}', f'{{"auth":"bearer {REDACTED}","n":1}}'),
        ("task-force sk-short risk-averse", "task-force sk-short risk-averse"),
        ("a plain message", "a plain message"),
    ],
)  # fmt: skip
def test_key_shaped_tokens_are_replaced_even_unregistered(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_redacted_json_stays_json() -> None:
    raw = json.dumps(
        {"total_tokens": 5, "user": KEY, "note": "Bearer zzz9", "k": "sk-AAAA1111bbbb"}
    )
    cleaned = json.loads(redact(raw))
    assert cleaned == {"total_tokens": 5, "user": REDACTED, "note": f"Bearer {REDACTED}",
                       "k": f"sk-{REDACTED}"}  # fmt: skip


def test_documents_are_redacted_value_by_value() -> None:
    document = {"stops": [{"message": f"refused {KEY}", "exit_code": 4}], "n": None, KEY[:3]: 1.5}
    assert redact_document(document) == {
        "stops": [{"message": f"refused {REDACTED}", "exit_code": 4}],
        "n": None,
        KEY[:3]: 1.5,
    }


def test_very_short_secrets_are_not_matched_inside_ordinary_words() -> None:
    register_secret("abc")
    assert redact("abcdef") == "abcdef"


# --- at the provider boundary: openai -------------------------------------------------------


def _json(status: int, body: Any, **headers: str) -> Callable[[httpx.Request], httpx.Response]:
    return lambda _: httpx.Response(status, json=body, headers=headers)


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        pytest.param(
            _json(401, {"error": {"message": f"Incorrect API key provided: {KEY}.",
                                  "code": "invalid_api_key"}}, **{"x-request-id": f"req-{KEY}"}),
            AuthRejected, id="401-echo",
        ),
        pytest.param(
            _json(400, {"error": {"message": f"bad size for {KEY}", "code": f"bad_{KEY}"}}),
            PermanentJobError, id="400-code-and-message",
        ),
        pytest.param(
            _json(402, {"error": {"message": f"quota is not enough for key {KEY} "
                                             f"(request id: rq-{KEY})"}}),
            PaymentRequired, id="402-request-id-in-message",
        ),
        pytest.param(
            lambda _: httpx.Response(
                502, text=f"<html><head><title>Bad gateway for {KEY}</title></head></html>",
                headers={"content-type": "text/html"}),
            RetryableError, id="html-page",
        ),
        pytest.param(
            _json(200, {"created": 1, "data": [], "usage": {"total_tokens": 3, "user": KEY}},
                  **{"x-request-id": KEY}),
            RetryableError, id="200-without-image-usage-and-request-id",
        ),
    ],
)  # fmt: skip
async def test_openai_errors_carry_no_key(
    answer: Callable[[httpx.Request], httpx.Response], kind: type[ProviderError]
) -> None:
    error = await openai_edit(answer)
    assert isinstance(error, kind)
    assert KEY not in texts(error)
    assert REDACTED in texts(error)


async def test_openai_success_carries_no_key() -> None:
    import base64

    body = {
        "created": 1,
        "data": [{"b64_json": base64.b64encode(PNG).decode()}],
        "usage": {"total_tokens": 3, "user": KEY, "auth": f"Bearer {KEY}"},
    }
    result = await openai_edit(_json(200, body, **{"x-request-id": f"req-{KEY}"}))
    assert result.images
    assert result.request_id == f"req-{REDACTED}"
    assert result.usage.total_tokens == 3
    assert KEY not in result.usage.raw
    json.loads(result.usage.raw)  # still JSON


async def test_a_download_url_with_the_key_is_not_repeated() -> None:
    url = f"https://cdn.gateway.test/x.png?key={KEY}"

    def answer(req: httpx.Request) -> httpx.Response:
        if req.method == "POST":
            return httpx.Response(200, json={"created": 1, "data": [{"url": url}]})
        return httpx.Response(404, text=f"no such file for {KEY}")

    error = await openai_edit(answer)
    assert isinstance(error, RetryableError)
    assert KEY not in texts(error)


async def test_a_transport_error_quoting_the_header_carries_no_key() -> None:
    def answer(req: httpx.Request) -> httpx.Response:
        raise httpx.LocalProtocolError(f"Illegal header value b'Bearer {KEY}\\n'")

    error = await openai_edit(answer)
    assert isinstance(error, RetryableError)
    assert KEY not in texts(error)


# --- at the provider boundary: venice -------------------------------------------------------


async def test_venice_error_headers_and_body_carry_no_key() -> None:
    headers = {"cf-ray": f"ray-{KEY}", "x-venice-model-id": f"firered {KEY}"}
    error = await venice_edit(
        lambda _: httpx.Response(
            402, json={"error": f"Insufficient balance on {KEY}"}, headers=headers
        )
    )
    assert isinstance(error, PaymentRequired)
    assert KEY not in texts(error)
    assert error.facts is not None
    assert error.facts.served_model == f"firered {REDACTED}"


async def test_venice_success_headers_carry_no_key() -> None:
    headers = {
        "content-type": "image/png",
        "cf-ray": f"ray-{KEY}",
        "x-venice-model-id": f"firered {KEY}",
        "x-venice-model-deprecation-warning": f"Model for {KEY} is deprecated",
    }
    result = await venice_edit(lambda _: httpx.Response(200, content=PNG, headers=headers))
    assert result.request_id == f"ray-{REDACTED}"
    assert result.facts.served_model == f"firered {REDACTED}"
    assert KEY not in result.facts.deprecation
    assert REDACTED in result.facts.deprecation


async def test_venice_model_list_is_stored_redacted(tmp_path: Path) -> None:
    from runner.testing.venice_catalogue import default_catalogue

    entries = default_catalogue()
    entries[0]["model_spec"]["name"] = f"Model of {KEY}"
    body = {"object": "list", "data": entries}
    saved: list[str] = []

    class Store:
        async def load_catalogue(self, source: str) -> None:
            return None

        async def save_catalogue(self, source: str, text: str) -> None:
            saved.append(text)

    profile = parse_manifest(_manifest_path(_venice_manifest(), tmp_path)).providers["v"]
    transport = httpx.MockTransport(lambda _: httpx.Response(200, json=body))
    async with httpx.AsyncClient(transport=transport) as client:
        catalogue = await load_catalogue(profile, client, Store(), datetime.now(UTC))  # type: ignore[arg-type]  # a two-method stand-in
    assert catalogue
    assert saved and KEY not in saved[0]
    assert REDACTED in saved[0]
    assert all(KEY not in model.name for model in catalogue.values())


# --- where text is written ------------------------------------------------------------------


async def test_the_store_redacts_every_provider_text_it_keeps(tmp_path: Path) -> None:
    from runner.records import JobSpec
    from runner.store.protocol import RunInfo

    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'j.db'}")
    try:
        spec = JobSpec("k" * 64, 0, tmp_path / "a.png", None, "p", "v", "m", {}, tmp_path, "o")
        await store.sync_manifest("M", [spec])
        await store.start_run(RunInfo("r1", "M", "h", 1, "t"))
        job = await store.claim("M", "v", "r1", datetime.now(UTC))
        assert job is not None
        ticket = await store.begin_attempt(spec.key, "r1", "v", "m")
        record = AttemptRecord(
            outcome=Outcome.PERMANENT,
            error_code=f"code-{KEY}",
            error_message=f"message {KEY}",
            request_id=f"id-{KEY}",
            usage=Usage(total_tokens=1, raw=json.dumps({"user": KEY})),
            facts=ReplyFacts(served_model=f"model {KEY}"),
        )
        await store.finish_attempt(ticket, record)
        await store.fail(spec.key, "r1", f"failed: {KEY}", FailureKind.REFUSED)
        await store.save_catalogue("u", f'{{"data": "{KEY}"}}')
        await store.end_run("r1", 1, f"stopped: {KEY}")
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "j.db") as db:
        row = db.execute(
            "SELECT error_message, request_id, served_model, usage_json FROM attempts"
        ).fetchone()
        error, stop = db.execute("SELECT j.error, r.stop_reason FROM jobs j, runs r").fetchone()
    assert row == (f"message {REDACTED}", f"id-{REDACTED}", f"model {REDACTED}",
                   json.dumps({"user": REDACTED}))  # fmt: skip
    assert (error, stop) == (f"failed: {REDACTED}", f"stopped: {REDACTED}")
    for path in tmp_path.iterdir():  # the database, its -wal and -shm, whatever is there
        assert KEY.encode() not in path.read_bytes(), path


def test_log_records_are_redacted_whatever_logger_makes_them() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    protect_handlers([handler])
    other = logging.getLogger("some.library")
    other.addHandler(handler)
    try:
        other.warning("sending %s with %s", f"Bearer {KEY}", {"key": KEY})
        try:
            raise ValueError(f"bad {KEY}")
        except ValueError:
            other.exception("failed")
    finally:
        other.removeHandler(handler)
    written = stream.getvalue()
    assert KEY not in written
    assert "sending Bearer [REDACTED]" in written
    assert "ValueError: bad [REDACTED]" in written


def test_runner_log_records_are_redacted_once_a_key_is_registered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="runner"):
        logging.getLogger("runner").info("echoed %s", KEY)
    assert KEY not in caplog.text
    assert f"echoed {REDACTED}" in caplog.text


# --- odd keys -------------------------------------------------------------------------------


def _venice_manifest() -> dict[str, Any]:
    return {
        "providers": {"v": {"dialect": "venice", "base_url": VENICE_BASE,
                            "api_key_env": "ODD_KEY_ENV"}},
        "jobs": [{"image": "a.png", "prompt": "p"}],
    }  # fmt: skip


def _manifest_path(document: dict[str, Any], folder: Path) -> Path:
    (folder / "a.png").write_bytes(PNG)
    path = folder / "jobs.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("sk-abc\ndef123", "line break"),
        ("sk-abc\rdef123", "line break"),
        ("sk-abc def123", "space"),
        ("sk-abc\tdef123", "control character"),
        ("sk-abc\x01def123", "control character"),
        ("sk-abcdéf123", "non-ASCII"),
        ("sk-abc\u200bdef", "non-ASCII"),
    ],
)
def test_odd_keys_are_refused_naming_the_variable_not_the_value(
    value: str, problem: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ODD_KEY_ENV", f"  {value}\n")
    parsed = parse_manifest(_manifest_path(_venice_manifest(), tmp_path))
    with pytest.raises(ManifestError) as caught:
        credentials(parsed, {"v"})
    message = str(caught.value)
    assert "ODD_KEY_ENV" in message
    assert "providers.v.api_key_env" in message
    assert problem in message
    assert "\n" not in message
    for piece in ("abc", "def"):
        assert piece not in message


def test_surrounding_whitespace_is_still_stripped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ODD_KEY_ENV", "\t sk-fine-key-123 \n")
    parsed = parse_manifest(_manifest_path(_venice_manifest(), tmp_path))
    assert credentials(parsed, {"v"})["v"].api_key == "sk-fine-key-123"


def test_a_key_read_from_the_environment_is_registered(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ODD_KEY_ENV", "plain-secret-value-77")
    credentials(parse_manifest(_manifest_path(_venice_manifest(), tmp_path)), {"v"})
    assert redact("echo plain-secret-value-77") == f"echo {REDACTED}"


def test_a_record_that_cannot_be_formatted_still_reaches_its_handler() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    protect_handlers([handler])
    other = logging.getLogger("some.library")
    other.addHandler(handler)
    raise_exceptions, logging.raiseExceptions = logging.raiseExceptions, False
    try:
        other.warning("two %s %s", "args wanted")  # logging reports it; the caller goes on
    finally:
        logging.raiseExceptions = raise_exceptions
        other.removeHandler(handler)
