"""Building each provider profile's client: credentials from the environment, the model
catalogue (Venice), and the provider object. The only place that reads secrets."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx

from runner.dialects.base import Provider
from runner.dialects.openai.client import OpenAIProvider
from runner.dialects.transfer import MIB, ReplyLimits
from runner.dialects.venice.catalogue import (
    CatalogueUnavailable,
    VeniceModel,
    fetch_catalogue,
    parse_catalogue,
)
from runner.dialects.venice.client import VeniceProvider
from runner.dialects.venice.siwx import SiwxSigner
from runner.errors import ManifestError
from runner.manifest.schema import ParsedManifest, ProviderProfile
from runner.redact import redact, register_secret
from runner.settings import CATALOGUE_MAX_AGE_S, DEFAULT_CONNECT_TIMEOUT_S
from runner.store.protocol import Store

log = logging.getLogger("runner")
Catalogue = Mapping[str, VeniceModel]


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


def http_client(profile: ProviderProfile) -> httpx.AsyncClient:
    # Keep as many idle connections as workers: with httpx's default of 20, a pool of 32
    # workers would close and reopen a dozen connections on every round.
    return httpx.AsyncClient(
        timeout=httpx.Timeout(
            connect=DEFAULT_CONNECT_TIMEOUT_S, read=profile.timeout_s, write=120.0, pool=None
        ),
        limits=httpx.Limits(
            max_connections=profile.concurrency, max_keepalive_connections=profile.concurrency
        ),
        follow_redirects=False,  # a redirect means a wrong base_url, never a new target
    )


def build_provider(
    profile: ProviderProfile,
    credential: Credential,
    client: httpx.AsyncClient,
    catalogue: Catalogue | None = None,
    wall_clock: Callable[[], float] = time.time,
) -> Provider:
    """`wall_clock` (epoch seconds) reads reset headers that are points in time."""
    limits = reply_limits(profile)
    if profile.dialect == "venice":
        return VeniceProvider(
            profile.name,
            profile.base_url,
            client,
            api_key=credential.api_key,
            signer=credential.signer,
            catalogue=catalogue,
            wall_clock=wall_clock,
            limits=limits,
        )
    if credential.api_key is None:  # the manifest check refuses x402 outside Venice
        raise ManifestError(f"providers.{profile.name}: needs an API key")
    return OpenAIProvider(
        profile.name,
        profile.base_url,
        credential.api_key,
        client,
        wall_clock=wall_clock,
        limits=limits,
    )


def reply_limits(profile: ProviderProfile) -> ReplyLimits:
    """`timeout_s` bounds each read (httpx) and, here, the whole exchange."""
    return ReplyLimits(int(profile.max_reply_mb * MIB), deadline_s=profile.timeout_s)


async def load_catalogue(
    profile: ProviderProfile,
    client: httpx.AsyncClient,
    store: Store | None,
    now: datetime,
) -> Catalogue | None:
    """Venice's model list: the database's copy when under a day old, else a fresh one
    (saved), else an older copy, else None. Without one, runs go on with the checks that
    need no list and the built-in prices, and say so once."""
    if profile.dialect != "venice":
        return None
    source = f"{profile.base_url}/models?type=inpaint"
    cached = await store.load_catalogue(source) if store is not None else None
    if cached is not None and now - cached[0] < timedelta(seconds=CATALOGUE_MAX_AGE_S):
        return _parsed(cached[1])
    try:
        body = await fetch_catalogue(client, profile.base_url)
    except CatalogueUnavailable as exc:
        if cached is not None:
            log.warning(
                "%s: model list unavailable (%s); using the copy from %s",
                profile.name, exc, cached[0].isoformat(timespec="minutes"),
            )  # fmt: skip
            return _parsed(cached[1])
        log.warning(
            "%s: model list unavailable (%s); checking only what needs no list (image size "
            "and bytes), with built-in prices",
            profile.name, exc,
        )  # fmt: skip
        return None
    text = redact(body.decode("utf-8", "replace"))  # a provider's text, kept in the database
    if store is not None:
        await store.save_catalogue(source, text)
    return _parsed(text)


def _parsed(body: str) -> Catalogue | None:
    try:
        return parse_catalogue(body.encode())
    except CatalogueUnavailable:
        return None
