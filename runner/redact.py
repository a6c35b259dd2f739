"""Keeping credentials out of everything the runner stores or prints.

A provider may send a key back: "Incorrect API key provided: sk-…", an HTML error page, a
request id, a header. Every text that comes from a provider is passed through `redact`
before it is kept, and the places that write text (the store's text columns, the runner's
log records, the CLI's error line and JSON results) pass it through again.

`redact` replaces

* every registered secret, exactly: each API key and wallet key is registered by
  `register_secret` when the credentials are read from the environment;
* anything shaped like an OpenAI-style key (`sk-…`) or a bearer token (`Bearer …`), which
  covers keys the runner was never given (a gateway echoing its upstream key).

Usage: `redact(text)` for one text, `redact_error(exc)` / `redact_result(result)` at the
provider boundary, `redact_document(obj)` for a JSON-shaped value, and `RedactingFilter`
on loggers and handlers (`protect_logging`).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar, overload
from urllib.parse import quote

from runner.errors import ProviderError
from runner.records import EditResult, ReplyFacts, Usage

REDACTED = "[REDACTED]"
# Shorter "secrets" would be replaced inside ordinary words; no real credential is that short.
MIN_SECRET_CHARS = 6

# OpenAI / CometAPI / new-api keys: `sk-` then a long run of key characters.
_KEY_SHAPE = r"\bsk-[A-Za-z0-9][A-Za-z0-9_\-]{7,}"
# RFC 6750 b64token characters: stops at quotes and commas, so JSON around it stays JSON.
_BEARER_SHAPE = r"(?i:\bbearer)[ \t]+[A-Za-z0-9._~+/\-]+=*"
_SHAPES = re.compile(f"{_KEY_SHAPE}|{_BEARER_SHAPE}")

_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()
_exact: re.Pattern[str] | None = None


def _variants(secret: str) -> set[str]:
    """The forms a secret may come back in: as is, URL-encoded, without a wallet's 0x."""
    forms = {secret, quote(secret, safe="")}
    if secret[:2].lower() == "0x":
        forms.add(secret[2:])
    return {form for form in forms if len(form) >= MIN_SECRET_CHARS}


def register_secret(secret: str) -> None:
    """Redact `secret` (and its encoded forms) from now on, in this process."""
    global _secrets, _exact
    forms = _variants(secret)
    with _lock:
        if forms <= _secrets:
            return
        _secrets = _secrets | forms
        # Longest first: a secret that contains another is replaced whole.
        ordered = sorted(_secrets, key=len, reverse=True)
        _exact = re.compile("|".join(re.escape(s) for s in ordered), re.IGNORECASE)
    protect_logger(logging.getLogger("runner"))


def forget_secrets() -> None:
    """Tests only: start again with no registered secret."""
    global _secrets, _exact
    with _lock:
        _secrets, _exact = frozenset(), None


@overload
def redact(text: str) -> str: ...
@overload
def redact(text: None) -> None: ...
def redact(text: str | None) -> str | None:
    """`text` with every registered secret and every key-shaped token replaced."""
    if not text:
        return text
    exact = _exact
    if exact is not None:
        text = exact.sub(REDACTED, text)
    return _SHAPES.sub(_mask_shape, text)


def _mask_shape(found: re.Match[str]) -> str:
    token = found.group(0)
    if token[:3] == "sk-":
        return "sk-" + REDACTED
    return token.split(None, 1)[0] + " " + REDACTED  # keep the word "Bearer"


def redact_usage(usage: Usage | None) -> Usage | None:
    if usage is None or usage.raw is None:
        return usage
    return dataclasses.replace(usage, raw=redact(usage.raw))


def redact_facts(facts: ReplyFacts | None) -> ReplyFacts | None:
    if facts is None:
        return None
    return dataclasses.replace(
        facts, served_model=redact(facts.served_model), deprecation=redact(facts.deprecation)
    )


E = TypeVar("E", bound=ProviderError)


def redact_error(exc: E) -> E:
    """The same error with every text a provider put in it redacted (in place, so the
    traceback and the cause stay)."""
    exc.message = redact(exc.message)
    exc.args = (exc.message,)
    exc.provider_code = redact(exc.provider_code)
    exc.request_id = redact(exc.request_id)
    exc.usage = redact_usage(exc.usage)
    exc.facts = redact_facts(exc.facts)
    return exc


def redact_result(result: EditResult) -> EditResult:
    return dataclasses.replace(
        result,
        request_id=redact(result.request_id),
        usage=redact_usage(result.usage),
        facts=redact_facts(result.facts),
    )


# Event fields named like credentials are never printed, whatever they hold.
_SECRET_NAME = re.compile(
    r"(api|private|secret|access|signing)_?key|secret|token|passw|authoriz|credential|cookie"
    r"|bearer|signature",
    re.IGNORECASE,
)


def redact_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Log event fields with the values of credential-named ones replaced."""
    return {k: REDACTED if _SECRET_NAME.search(k) else v for k, v in fields.items()}


def redact_document(value: Any) -> Any:
    """A JSON-shaped value (dicts, lists, scalars) with every string redacted; redacting
    the values, not the encoded text, keeps the document valid JSON."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_document(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_document(item) for item in value]
    return value


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (and traceback text) with secrets redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: the handler reports it, as without us
            return True
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


_FILTER = RedactingFilter()


def protect_logger(logger: logging.Logger) -> None:
    """Redact every record made by `logger` (idempotent)."""
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)


def protect_handlers(handlers: Iterable[logging.Handler]) -> None:
    """Redact every record that reaches these handlers, whichever logger made it."""
    for handler in handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
