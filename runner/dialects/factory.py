"""Building each provider profile's client: credentials from the environment, the model
catalogue (Venice), and the provider object. The only place that reads secrets."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from runner.dialects.venice.siwx import SiwxSigner
from runner.errors import ManifestError
from runner.manifest.expand import ParsedManifest
from runner.records import ProviderProfile
from runner.redact import register_secret
from runner.settings import DEFAULT_CONNECT_TIMEOUT_S

if TYPE_CHECKING:
    import ssl

    import httpx

log = logging.getLogger("runner")


@dataclass(frozen=True, slots=True)
class Credential:
    """An API key, or an x402 wallet signer; `repr` never shows either."""

    api_key: str | None = None
    signer: SiwxSigner | None = None

    def __repr__(self) -> str:
        return f"Credential({'wallet ' + self.signer.address if self.signer else 'api key'})"


def credentials(parsed: ParsedManifest, needed: set[str]) -> dict[str, Credential]:
    """Each needed profile's credential from its env var; exit-2 errors name the field."""
    found: dict[str, Credential] = {}
    for name in sorted(needed):
        profile = parsed.providers[name]
        wallet = profile.auth == "x402"
        field = f"providers.{name}.{'wallet_key_env' if wallet else 'api_key_env'}"
        env = profile.secret_env
        if not env:
            raise ManifestError(
                "required: the name of the environment variable holding the API key",
                file=str(parsed.path),
                field=field,
            )
        value = os.environ.get(env, "").strip()
        if not value:
            what = "the wallet's private key" if wallet else "<your key>"
            raise ManifestError(
                f"environment variable {env} is not set; export {env}={what} and run again",
                file=str(parsed.path),
                field=field,
            )
        register_secret(value)  # before anything can echo it, even the refusals below
        if problem := odd_characters(value):
            # The value itself is never shown: it is a secret, and may be one mistyped.
            raise ManifestError(
                f"environment variable {env} {problem}; a key is one line of printable ASCII "
                f"(check how {env} is set)",
                file=str(parsed.path),
                field=field,
            )
        if wallet:
            try:
                found[name] = Credential(signer=SiwxSigner(value, env_name=env))
            except ManifestError as exc:
                raise ManifestError(exc.reason, file=str(parsed.path), field=field) from None
        else:
            found[name] = Credential(api_key=value)
    return found


def odd_characters(value: str) -> str | None:
    """Why `value` cannot go into an HTTP header as a key, or None. Inner line breaks,
    control characters and spaces would be sent (or refused by httpx) as part of a header;
    non-ASCII ones cannot be encoded into one at all."""
    for char in value:
        if char in "\r\n":
            return "contains a line break"
        if not char.isascii():
            return "contains a non-ASCII character"
        if char == " ":
            return "contains a space"
        if not char.isprintable():
            return "contains a control character (a tab, or another invisible one)"
    return None


@cache
def _tls_context() -> ssl.SSLContext:
    """Certificate checks as httpx makes them by default (certifi's CA bundle), loaded once
    per process: loading the bundle takes about 50 ms, paid by every client otherwise."""
    import ssl

    import certifi

    return ssl.create_default_context(cafile=certifi.where())


def http_client(profile: ProviderProfile) -> httpx.AsyncClient:
    # Imported here: a run with nothing to send (and `status`, `jobs`) needs no HTTP client.
    import httpx

    # Keep as many idle connections as workers: with httpx's default of 20, a pool of 32
    # workers would close and reopen a dozen connections on every round.
    return httpx.AsyncClient(
        verify=_tls_context(),
        timeout=httpx.Timeout(
            connect=DEFAULT_CONNECT_TIMEOUT_S, read=profile.timeout_s, write=120.0, pool=None
        ),
        limits=httpx.Limits(
            max_connections=profile.concurrency, max_keepalive_connections=profile.concurrency
        ),
        follow_redirects=False,  # a redirect means a wrong base_url, never a new target
    )
