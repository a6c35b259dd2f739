"""Reading replies within bounds, so a hostile or broken provider cannot exhaust memory,
hang a worker, or send the runner to fetch from the machine's own network.

* a byte cap: refused at once when `Content-Length` announces more, and reading stops as
  soon as a body (chunked, or lying about its length) passes it; never more is held;
* an overall deadline for a whole exchange: httpx's timeouts bound each read, so a reply
  dripping one byte a second would otherwise never end;
* for images fetched from `data[].url`: only public internet addresses (every address the
  host resolves to is checked), redirects followed by hand with each hop checked. A
  provider that is itself on a private address (a fake on 127.0.0.1, a gateway on the LAN)
  may point at private addresses too.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import httpx

from runner.errors import RetryableError
from runner.settings import DEFAULT_MAX_REPLY_MB

if TYPE_CHECKING:
    from runner.records import ProviderProfile

MIB = 1024 * 1024
# Error bodies are a few hundred bytes of JSON; their head is all classifying needs.
ERROR_BODY_CAP = 256 * 1024
MAX_REDIRECTS = 5

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]


@dataclass(frozen=True, slots=True)
class ReplyLimits:
    """A provider profile's bounds: `max_reply_mb` per image, `timeout_s` per exchange."""

    max_image_bytes: int = DEFAULT_MAX_REPLY_MB * MIB
    deadline_s: float | None = None  # None: only httpx's per-read timeouts

    def reply_cap(self, images: int) -> int:
        """A reply carrying `images` images (n > 1) may be that many times larger."""
        return self.max_image_bytes * max(1, images)


DEFAULT_LIMITS = ReplyLimits()


def reply_limits(profile: ProviderProfile) -> ReplyLimits:
    """`timeout_s` bounds each read (httpx) and, here, the whole exchange."""
    return ReplyLimits(int(profile.max_reply_mb * MIB), deadline_s=profile.timeout_s)


class DownloadRefused(Exception):
    """A `data[].url` the runner could not fetch (too slow, too many redirects, no such
    host); providers translate it to RetryableError."""


class AddressRefused(DownloadRefused):
    """A `data[].url` the runner will never fetch (a non-public address, not http(s)):
    asking again would pay for another such link, so the job fails."""


def _content_length(response: httpx.Response) -> int | None:
    try:
        return int(response.headers["content-length"])
    except (KeyError, ValueError):
        return None


def _too_large(response: httpx.Response, cap: int, seen: str) -> RetryableError:
    return RetryableError(
        f"bad_response: reply over the {cap / MIB:g} MB cap ({seen}); raise the profile's "
        "max_reply_mb if real images are this large",
        status_code=response.status_code,
    )


async def read_capped(response: httpx.Response, cap: int) -> bytes:
    """The whole body of a streamed response, or a RetryableError once it passes `cap`."""
    announced = _content_length(response)
    if announced is not None and announced > cap:
        raise _too_large(response, cap, f"Content-Length {announced:,}")
    chunks: list[bytes] = []
    held = 0
    async for chunk in response.aiter_bytes():
        held += len(chunk)
        if held > cap:
            raise _too_large(response, cap, f"more than {cap:,} bytes sent")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_head(response: httpx.Response, cap: int = ERROR_BODY_CAP) -> bytes:
    """The first `cap` bytes of a streamed body; the rest is never read."""
    chunks: list[bytes] = []
    held = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk[: cap - held])
        held += len(chunks[-1])
        if held >= cap:
            break
    return b"".join(chunks)


# --- where a download may go ----------------------------------------------------------------


async def resolve_host(host: str, port: int) -> list[str]:
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def non_public(address: str) -> str | None:
    """Why `address` is not a public internet address (an IPv4 address inside an IPv6 one
    counts too), or None."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone
    inner: list[ipaddress.IPv4Address | ipaddress.IPv6Address | None] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):  # the IPv4 address inside says more
        inner[:0] = [ip.ipv4_mapped, ip.sixtofour, ip.teredo[1] if ip.teredo else None]
    for candidate in inner:
        if candidate is None:
            continue
        for kind in ("unspecified", "loopback", "link_local", "multicast", "reserved", "private"):
            if getattr(candidate, f"is_{kind}"):
                return kind.replace("_", "-")
        if not candidate.is_global:
            return "non-public"
    return None


class AddressPolicy:
    """Which hosts a result-image download may reach; see the module docstring."""

    def __init__(self, base_url: str, resolve: Resolver = resolve_host) -> None:
        self._base = httpx.URL(base_url)
        self._resolve = resolve
        self._private_ok: bool | None = None

    async def _addresses(self, url: httpx.URL) -> list[str]:
        host = url.host
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            return list(await self._resolve(host, port))
        except OSError as exc:  # socket.gaierror included
            raise DownloadRefused(f"cannot resolve {host}: {exc}") from exc

    async def private_allowed(self) -> bool:
        """True when the provider itself is on a non-public address (looked up once)."""
        if self._private_ok is None:
            try:
                addresses = await self._addresses(self._base)
            except DownloadRefused:
                addresses = []  # unknown: stay strict
            self._private_ok = any(non_public(address) for address in addresses)
        return self._private_ok

    async def check(self, url: httpx.URL) -> None:
        """Raise DownloadRefused unless `url` may be fetched."""
        if url.scheme not in ("http", "https"):
            raise AddressRefused(f"not an http(s) URL: {url.scheme}:")
        if await self.private_allowed():
            return
        for address in await self._addresses(url):
            if reason := non_public(address):
                raise AddressRefused(
                    f"{url.host} is at {address}, a {reason} address; result images are "
                    "fetched from public addresses only"
                )


async def download(
    client: httpx.AsyncClient, url: str, policy: AddressPolicy, limits: ReplyLimits
) -> bytes:
    """GET one result image within `limits`, following redirects by hand (each hop is
    checked, and none carries a credential: the client has none). Raises DownloadRefused,
    RetryableError (too large) or httpx errors."""
    target = httpx.URL(url)
    try:
        with anyio.fail_after(limits.deadline_s):
            for _ in range(MAX_REDIRECTS + 1):
                await policy.check(target)
                async with client.stream("GET", target, follow_redirects=False) as response:
                    if response.is_redirect:
                        target = target.join(response.headers["location"])
                        continue
                    response.raise_for_status()
                    return await read_capped(response, limits.max_image_bytes)
    except TimeoutError as exc:
        raise DownloadRefused(f"not complete within {limits.deadline_s:g} s") from exc
    raise DownloadRefused(f"more than {MAX_REDIRECTS} redirects")
