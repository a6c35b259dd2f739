"""The Venice dialect on the wire: parsing and checking an edit, and the handler's routes."""

from __future__ import annotations

import base64
import binascii
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs, quote, urlsplit

from PIL import Image

from runner.testing.imaging import OutputFormat, digest, edited_image_as, fingerprint
from runner.testing.multipart import BadRequest, header_params, parse_multipart
from runner.testing.server import BaseHandler, FakeServer
from runner.testing.venice_bodies import (
    ERRORS,
    ErrorReply,
    detailed,
    discovery_402,
    error,
    key_402,
    lockout_429,
    wallet_402,
)
from runner.testing.venice_catalogue import (
    DEFAULT_MODEL,
    effective_resolution,
    format_usd,
    max_input_images,
    price_micro_usd,
)

if TYPE_CHECKING:
    from runner.testing.venice import Charge, Credentials, FakeVenice

__all__ = ["API_PREFIX", "VeniceHandler", "VeniceRequest"]

API_PREFIX = "/api/v1"
Route = Literal["edit", "multi-edit"]
ROUTES: dict[str, Route] = {
    f"{API_PREFIX}/image/edit": "edit",
    f"{API_PREFIX}/image/multi-edit": "multi-edit",
}
VENICE_VERSION = "fake-20261121"
MAX_IMAGE_BYTES = 25 * 1024 * 1024
MAX_PIXELS = 33_177_600  # 7680 x 4320
MAX_PROMPT = 32768

_COMMON_KEYS = frozenset(
    {
        "prompt",
        "aspect_ratio",
        "resolution",
        "output_format",
        "safe_mode",
        "enhance_prompt",
        "disable_prompt_optimization_thinking",
    }
)
# `additionalProperties: false`: anything else, `mask` and `modelId` on /image/edit
# included, is a 400. The fake applies the same strictness to /image/multi-edit.
EDIT_KEYS = _COMMON_KEYS | {"image", "model", "quality"}
MULTI_KEYS = _COMMON_KEYS | {"images", "modelId", "quality"}
_FORMATS: dict[str, OutputFormat] = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}
_BOOLS = ("safe_mode", "enhance_prompt", "disable_prompt_optimization_thinking")


@dataclass(frozen=True, slots=True)
class VeniceRequest:
    """What the fake kept of one edit request."""

    path: str
    kind: str  # "json", "multipart", or "" for anything else
    fields: dict[str, str]  # every field but the images; JSON values not strings as JSON
    images: int
    headers: dict[str, str]  # lower-case names
    fingerprint: str  # "" without a first image and a prompt to fingerprint
    status: int  # 0: no response was sent (the server was stopping)
    request_id: str  # the CF-RAY sent
    fault: str | None = None  # the script / fault_mix entry that answered, if any
    code: str = ""  # the error's machine code, also when its body leaves it out
    auth: str = ""  # "api_key", "wallet" or "none" once credentials were accepted
    wallet: str | None = None  # the address a SIGN-IN-WITH-X header proved
    nonce: str | None = None
    model: str = ""
    charged_usd: float = 0.0


@dataclass(slots=True)
class _Body:
    kind: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    images: list[bytes] = field(default_factory=list)
    problem: ErrorReply | None = None


@dataclass(frozen=True, slots=True)
class _Job:
    model: str
    entry: dict[str, Any]
    prompt: str
    images: list[bytes]
    mask: bytes | None
    fmt: OutputFormat
    enhance: bool
    price: int  # micro-dollars


def _decode_image_string(text: str) -> bytes:
    if text.startswith(("http://", "https://")):
        raise BadRequest("FakeVenice cannot fetch image URLs; send base64 or a file")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("image is not valid base64") from None


def parse_body(route: Route, content_type: str, raw: bytes) -> _Body:
    body = _Body()
    kind, _ = header_params(content_type)
    key = "image" if route == "edit" else "images"
    try:
        if kind == "application/json":
            body.kind = "json"
            try:
                obj = json.loads(raw)
            except ValueError:
                raise BadRequest("body is not valid JSON") from None
            if not isinstance(obj, dict):
                raise BadRequest("body must be a JSON object")
            given = obj.pop(key, None)
            body.fields = obj
            values = [given] if route == "edit" and given is not None else given or []
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise BadRequest(f"{key} must be {'a string' if route == 'edit' else 'strings'}")
            body.images = [_decode_image_string(v) for v in values]
        elif kind == "multipart/form-data":
            body.kind = "multipart"
            for part in parse_multipart(content_type, raw):
                if part.name == key and part.filename is not None:
                    body.images.append(part.data)
                elif part.name == key and route == "edit":
                    body.images.append(_decode_image_string(part.data.decode("latin-1")))
                elif part.name == key:
                    raise BadRequest("multipart images must be file parts")
                elif part.filename is not None:
                    body.fields.setdefault(part.name, f"<file {part.filename}>")
                else:
                    body.fields.setdefault(part.name, part.data.decode("utf-8", "replace"))
        else:
            body.problem = error(
                415, f"Unsupported content type {kind or 'none'!r}", "INVALID_CONTENT_TYPE"
            )
    except BadRequest as exc:
        body.problem = detailed(str(exc), {"": str(exc)})
    return body


def _flag(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    return {"true": True, "false": False}.get(value) if isinstance(value, str) else None


def check_job(route: Route, body: _Body, fake: FakeVenice) -> _Job | ErrorReply:
    """The edit a well-formed body asks for, or the reply refusing it."""
    fields = body.fields
    allowed = EDIT_KEYS if route == "edit" else MULTI_KEYS
    if route == "edit" and not fake.edit_accepts_quality:
        allowed = allowed - {"quality"}
    unknown = sorted(set(fields) - allowed)
    if unknown:
        keys = ", ".join(repr(k) for k in unknown)
        return detailed("Invalid request", {"": f"Unrecognized key(s) in object: {keys}"})
    prompt = fields.get("prompt")
    if not isinstance(prompt, str) or not 1 <= len(prompt) <= MAX_PROMPT:
        return detailed("Invalid request", {"prompt": f"Required: a string of 1-{MAX_PROMPT}"})
    model_key = "model" if route == "edit" else "modelId"
    model = fields.get(model_key, DEFAULT_MODEL if route == "edit" else None)
    if not isinstance(model, str):
        return detailed("Invalid request", {model_key: "Required: a model id string"})
    entry = fake._model(model)
    if entry is None:
        return error(404, f"Model {model!r} not found", "MODEL_NOT_FOUND")
    spec = entry.get("model_spec", {})
    if spec.get("offline"):
        return error(503, f"Model {model!r} is offline", "MODEL_OFFLINE")
    constraints = spec.get("constraints", {})
    problems: dict[str, str] = {}
    limit = constraints.get("promptCharacterLimit", MAX_PROMPT)
    if len(prompt) > limit:
        problems["prompt"] = f"String must contain at most {limit} character(s)"
    choices = {
        "aspect_ratio": constraints.get("aspectRatios"),
        "resolution": constraints.get("resolutions"),
        "quality": ["low", "medium", "high"],
        "output_format": list(_FORMATS),
    }
    for name, allowed_values in choices.items():
        value = fields.get(name)
        if value is not None and allowed_values is not None and value not in allowed_values:
            problems[name] = f"Invalid enum value. Expected one of {allowed_values}"
    for name in _BOOLS:
        if name in fields and _flag(fields[name]) is None:
            problems[name] = "Expected boolean"
    most = 1 if route == "edit" else max_input_images(entry)
    if not body.images:
        problems["image" if route == "edit" else "images"] = "Required"
    elif len(body.images) > most:
        problems["image" if route == "edit" else "images"] = (
            f"Array must contain at most {most} element(s)"
        )
    if problems:
        return detailed("Invalid request", problems)
    sizes: list[tuple[int, int]] = []
    for data in body.images:
        refused = _check_image(data, fake.min_pixels, sizes)
        if refused is not None:
            return refused
    resolution = fields.get("resolution")
    fmt = _FORMATS.get(str(fields.get("output_format", "")))
    if fmt is None:
        fmt = "jpeg" if effective_resolution(entry, resolution) in ("2K", "4K") else "png"
    enhance = _flag(fields.get("enhance_prompt")) is True
    price = price_micro_usd(
        entry,
        images=len(body.images),
        resolution=resolution,
        quality=fields.get("quality"),
        enhance=enhance,
    )
    mask = body.images[1] if len(sizes) > 1 and sizes[1] == sizes[0] else None
    return _Job(model, entry, prompt, body.images, mask, fmt, enhance, price)


def _check_image(data: bytes, min_pixels: int, sizes: list[tuple[int, int]]) -> ErrorReply | None:
    if len(data) > MAX_IMAGE_BYTES:
        return error(413, "Image file is larger than 25MB", "PAYLOAD_TOO_LARGE")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                return error(422, f"Image is too large: {width}x{height}", "IMAGE_TOO_LARGE")
            img.load()
    except Exception:  # whatever Pillow raises, the upload is not an image
        return error(
            400, "The image file is corrupted or not a supported format", "CORRUPTED_IMAGE"
        )
    if width * height < min_pixels:
        return error(400, f"Image is too small: {width}x{height}", "IMAGE_TOO_SMALL")
    sizes.append((width, height))
    return None


def _echoed(body: bytes, echo: Callable[[str], str]) -> bytes:
    """An error body whose `error` (or `message`) text goes through `echo`."""
    try:
        document = json.loads(body)
    except ValueError:
        return body
    for name in ("error", "message"):
        if isinstance(document, dict) and isinstance(document.get(name), str):
            document[name] = echo(document[name])
    return json.dumps(document).encode()


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


@dataclass(slots=True)
class _Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    code: str = ""
    fault: str | None = None
    lockout: bool = False
    charge: Charge | None = None

    @classmethod
    def of(cls, reply: ErrorReply, headers: list[tuple[str, str]], **kw: Any) -> _Reply:
        return cls(
            reply.status, reply.encoded(), headers=[*reply.headers, *headers], code=reply.code, **kw
        )


class VeniceHandler(BaseHandler):
    server_version = "FakeVenice/1.0"
    server: FakeServer[FakeVenice]

    def do_GET(self) -> None:
        self._discard_body_or_close()
        url = urlsplit(self.path)
        if url.path != f"{API_PREFIX}/models":
            self._send(404, error(404, "Not found").encoded())
            return
        down, entries = self.server.provider._note_catalogue_fetch()
        if down:
            self._send(503, error(503, "Service temporarily unavailable").encoded())
            return
        wanted = parse_qs(url.query).get("type", ["text"])[0]
        data = [e for e in entries if wanted == "all" or e.get("type") == wanted]
        for entry in data:
            spec = entry.get("model_spec")
            if isinstance(spec, dict) and "name" in spec:
                spec["name"] = self.server.provider._echo(str(spec["name"]))
        self._send(200, json.dumps({"object": "list", "type": wanted, "data": data}).encode())

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        route = ROUTES.get(path)
        if route is None:
            self._discard_body_or_close()
            self._send(404, error(404, "Not found").encoded())
            return
        fake = self.server.provider
        ray = fake._begin()
        headers = {name.lower(): value for name, value in self.headers.items()}
        arrived = time.monotonic()
        try:
            raw = self._read_body()
            arrived = time.monotonic()
            body = parse_body(route, self.headers.get("Content-Type", ""), raw)
        except BadRequest as exc:
            body = _Body(problem=detailed(str(exc), {"": str(exc)}))
        except OSError:
            self.close_connection = True
            body = _Body()
            fake._record(
                self._recorded(path, body, headers, "", 0, ray),
                paid=False,
                failure=False,
                now=fake.clock(),
            )
            return
        now = fake.clock()
        prompt = body.fields.get("prompt")
        fp = ""
        if body.images and isinstance(prompt, str):
            model = body.fields.get("model" if route == "edit" else "modelId", "")
            mask = digest(body.images[1]) if len(body.images) > 1 else None
            fp = fingerprint(digest(body.images[0]), mask, prompt, _text(model))
            fake._note_received(fp)

        credentials: Credentials | None = None
        job: _Job | ErrorReply | None = None
        reply: _Reply
        base = [("CF-RAY", ray), ("x-venice-version", VENICE_VERSION)]
        if fake._locked(now):
            reply = _Reply.of(lockout_429(fake.lockout_threshold), base, lockout=True)
        else:
            who = fake._authenticate(headers, now)
            if isinstance(who, ErrorReply):
                reply = _Reply.of(who, base)
            else:
                credentials = who
                job = body.problem or check_job(route, body, fake)
                reply = self._judge(path, who, job, base, now)
        delay = max(0.0, fake.latency - (time.monotonic() - arrived))
        stopped = fake._sleep(delay)
        if stopped and reply.charge is not None:
            fake._refund(reply.charge)
        status = 0 if stopped else reply.status
        recorded = self._recorded(
            path,
            body,
            headers,
            fp,
            status,
            ray,
            reply,
            credentials,
            job if isinstance(job, _Job) else None,
        )
        failure = not stopped and not reply.lockout and not 200 <= status < 300
        fake._record(recorded, paid=status == 200 and reply.fault is None, failure=failure, now=now)
        if stopped:
            self.close_connection = True
            return
        echo = fake.echo_key and reply.status != 200
        payload = _echoed(reply.body, fake._echo) if echo else reply.body
        self._send(reply.status, payload, reply.content_type, reply.headers)

    def _judge(
        self,
        path: str,
        who: Credentials,
        job: _Job | ErrorReply,
        base: list[tuple[str, str]],
        now: float,
    ) -> _Reply:
        fake = self.server.provider
        resource = f"{fake.origin}{path}"
        if who.kind == "none" and (fake.api_key is not None or fake.wallet is not None):
            price = job.price if isinstance(job, _Job) else self._default_price()
            return _Reply.of(discovery_402(resource, price, now), base)
        admitted, limits = fake._admit(now)
        headers = [*base, *limits, *fake._balance_headers(who.kind)]
        if not admitted:
            return _Reply.of(ERRORS["rate_limit"], headers)
        if isinstance(job, ErrorReply):
            return _Reply.of(job, headers)
        fault = fake._choose_fault()
        if fault is not None:
            if fault == "rate_limit" and not limits:
                headers.append(("x-ratelimit-reset-requests", fake._reset_stamp(now + 60.0)))
            return _Reply.of(self._fault(fault, job, resource, now), headers, fault=fault)
        charge = fake._charge(job.price)
        if charge is None:
            balance = fake.balance_usd or 0.0
            if who.kind == "wallet":
                short = wallet_402(balance, job.price / 1_000_000, now)
            elif who.kind == "api_key":
                short = key_402(fake.payment_key_code)
            else:
                short = discovery_402(resource, job.price, now)
            return _Reply.of(short, headers)
        try:
            image = edited_image_as(job.images[0], job.mask, job.fmt)
        except Exception:  # checked already; only an image Pillow half-understands gets here
            fake._refund(charge)
            return _Reply.of(
                error(400, "The image could not be edited", "CORRUPTED_IMAGE"), headers
            )
        headers = [*base, *limits, *fake._balance_headers(who.kind, charge.before)]
        if who.kind == "wallet" and charge.after is not None:
            headers.append(("X-Balance-Remaining", format_usd(charge.after)))
        headers += self._model_headers(job)
        return _Reply(200, image, f"image/{job.fmt}", headers, charge=charge)

    def _fault(self, fault: str, job: _Job, resource: str, now: float) -> ErrorReply:
        fake = self.server.provider
        if fault == "payment_x402_discovery":
            return discovery_402(resource, job.price, now)
        if fault == "payment_wallet":
            return wallet_402(fake.balance_usd or 0.0, job.price / 1_000_000, now)
        if fault == "payment_key":
            return key_402(fake.payment_key_code)
        # Only reachable through script.append(), which cannot validate its argument.
        return ERRORS.get(fault) or error(
            500, f"FakeVenice: unknown fault {fault!r}", "UNKNOWN_ERROR"
        )

    def _model_headers(self, job: _Job) -> list[tuple[str, str]]:
        fake = self.server.provider
        headers = [
            ("x-venice-model-id", fake._echo(job.model)),
            ("x-venice-model-name", str(job.entry.get("model_spec", {}).get("name", job.model))),
            ("x-venice-is-content-violation", "false"),
        ]
        if job.enhance:
            headers.append(("x-venice-enhanced-prompt", quote(job.prompt, safe="")))
        if job.model in fake.deprecated_models:
            replacement = fake.deprecated_models[job.model]
            warning = (
                f"Model {job.model} is deprecated and will be removed on {fake.deprecation_date}"
            )
            headers += [
                ("x-venice-deprecated", "true"),
                (
                    "x-venice-model-deprecation-warning",
                    fake._echo(warning + (f"; use {replacement}" if replacement else "")),
                ),
                ("x-venice-model-deprecation-date", fake.deprecation_date),
            ]
            if replacement:
                headers.append(("x-venice-deprecated-replacement", replacement))
        return headers

    def _default_price(self) -> int:
        entry = self.server.provider._model(DEFAULT_MODEL)
        if entry is None:
            return 0
        return price_micro_usd(entry, images=1, resolution=None, quality=None, enhance=False)

    def _recorded(
        self,
        path: str,
        body: _Body,
        headers: dict[str, str],
        fp: str,
        status: int,
        ray: str,
        reply: _Reply | None = None,
        who: Credentials | None = None,
        job: _Job | None = None,
    ) -> VeniceRequest:
        charge = reply.charge if reply is not None and status == 200 else None
        return VeniceRequest(
            path=path,
            kind=body.kind,
            fields={name: _text(value) for name, value in body.fields.items()},
            images=len(body.images),
            headers=headers,
            fingerprint=fp,
            status=status,
            request_id=ray,
            fault=reply.fault if reply is not None else None,
            code=reply.code if reply is not None else "",
            auth=who.kind if who is not None else "",
            wallet=who.wallet if who is not None else None,
            nonce=who.nonce if who is not None else None,
            model=job.model if job is not None else "",
            charged_usd=charge.price / 1_000_000 if charge is not None else 0.0,
        )
