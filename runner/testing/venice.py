"""A fake Venice image-edit API over real HTTP (PROVIDERS.md §3): `POST /api/v1/image/edit`
and `/image/multi-edit`, answered with raw image bytes, and `GET /api/v1/models`.

Accounting and judging, worth knowing when writing assertions:

* An edit is judged in this order: the lock-out (429), credentials (401, or the x402
  discovery 402 when none were sent), the rate limit (429), the body (400, 404, 413, 415,
  422, 503 for an offline model), the fault from `script`/`fault_mix`, the balance (402 in
  the shape for the caller's kind of credentials), then the image is rendered. Rejected
  requests consume no script entry; every request past the credentials uses up a slot of
  the rate window, even when its body is then refused.
* All money is priced from the served `catalogue` and kept in micro-dollars. An edit is
  charged when the server commits to it (before `latency` passes), so a client that gave up
  has still paid; `paid` counts those edits by fingerprint.
* `clock` (epoch seconds) drives the rate window, the lock-out, SIWX expiry and every
  timestamp the fake sends; `latency` is real time.
* Every non-2xx edit reply counts towards the lock-out except the lock-out's own 429s;
  tripping it empties the failure window, so it clears `lockout_duration` seconds later.
* Counters are updated before the reply is written, as in `FakeProvider`.
* Replies are `edited_image(images[0], mask)` re-encoded as asked: `mask` is the second
  image of a multi-edit when it has the first's size (else no mask). Resolution and aspect
  ratio are checked and priced but do not change the picture.
"""

from __future__ import annotations

import collections
import copy
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from runner.testing.imaging import OutputFormat, digest, edited_image_as, fingerprint
from runner.testing.server import FakeBase
from runner.testing.venice_bodies import VENICE_FAULTS, ErrorReply, error
from runner.testing.venice_catalogue import default_catalogue, format_usd
from runner.testing.venice_http import VeniceHandler, VeniceRequest

__all__ = ["VENICE_FAULTS", "Credentials", "FakeVenice", "VeniceRequest"]

RATE_WINDOW_S = 60.0

AuthKind = Literal["api_key", "wallet", "none"]


@dataclass(frozen=True, slots=True)
class Credentials:
    kind: AuthKind
    wallet: str | None = None  # the address a SIGN-IN-WITH-X header proved
    nonce: str | None = None


@dataclass(frozen=True, slots=True)
class Charge:
    price: int  # micro-dollars
    before: int | None  # balance in micro-dollars; None: unlimited
    after: int | None


class FakeVenice(FakeBase[VeniceRequest]):
    """An in-process HTTP server playing Venice's paid image-edit API; see the module doc.

    `latency`, `script`, `fault_mix`, `rate_limit_per_minute`, `catalogue_down` and
    `balance_usd` may be changed while it runs.

    * `api_key`: the bearer token accepted; `wallet`: the address a SIGN-IN-WITH-X header
      (or legacy X-Sign-In-With-X) must prove. With both None any caller is served, even
      one without credentials; otherwise a caller without any gets the x402 discovery 402.
    * `rate_limit_per_minute`: sliding 60 s window, None for no limit; `reset_in_ms` sends
      `x-ratelimit-reset-requests` in milliseconds instead of seconds.
    * `balance_usd`: None is unlimited (and no balance headers are sent);
      `balance_diem` is only reported.
    * `catalogue`: `data[]` items as `venice_catalogue.model_entry` builds them;
      `deprecated_models`: model id -> replacement id (or None) for deprecation headers.
    * `lockout_threshold`/`lockout_window`/`lockout_duration`: more than `threshold`
      failures within `window` seconds lock every edit out for `duration` seconds.
    * `min_pixels`: smaller images get 400 IMAGE_TOO_SMALL (Venice: 65,536); 0 disables.
    * `edit_accepts_quality`, `payment_key_code`: switch the two UNCONFIRMED behaviours.
    * `echo_key`: play a provider that sends `api_key` back: in every CF-RAY, error message,
      model and deprecation header, and in the model list's names.
    """

    FAULT_NAMES: ClassVar[tuple[str, ...]] = VENICE_FAULTS
    HANDLER = VeniceHandler

    def __init__(
        self,
        *,
        api_key: str | None = "test-key",
        wallet: str | None = None,
        latency: float = 0.0,
        script: Iterable[str | None] = (),
        fault_mix: Mapping[str, float] | None = None,
        seed: int = 0,
        rate_limit_per_minute: int | None = 20,
        reset_in_ms: bool = False,
        balance_usd: float | None = None,
        balance_diem: float = 0.0,
        clock: Callable[[], float] = time.time,
        catalogue: Sequence[Mapping[str, Any]] | None = None,
        catalogue_down: bool = False,
        deprecated_models: Mapping[str, str | None] | None = None,
        deprecation_date: str = "2026-12-31",
        lockout_threshold: int = 20,
        lockout_window: float = 30.0,
        lockout_duration: float = 30.0,
        min_pixels: int = 65_536,
        edit_accepts_quality: bool = True,
        payment_key_code: bool = True,
        echo_key: bool = False,
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.wallet = wallet
        self.latency = latency
        self.rate_limit_per_minute = rate_limit_per_minute
        self.reset_in_ms = reset_in_ms
        self.balance_diem = balance_diem
        self.clock = clock
        self.catalogue_down = catalogue_down
        self.deprecated_models = dict(deprecated_models or {})
        self.deprecation_date = deprecation_date
        self.lockout_threshold = lockout_threshold
        self.lockout_window = lockout_window
        self.lockout_duration = lockout_duration
        self.min_pixels = min_pixels
        # The `/image/edit` JSON schema has no `quality` although its docs describe one;
        # whether the real endpoint takes it is UNCONFIRMED (PROVIDERS.md §3).
        self.edit_accepts_quality = edit_accepts_quality
        # Whether the real API-key 402 body carries `code` is UNCONFIRMED.
        self.payment_key_code = payment_key_code
        self.echo_key = echo_key
        super().__init__(script=script, fault_mix=fault_mix, seed=seed, port=port)
        self._catalogue = copy.deepcopy([dict(entry) for entry in catalogue or default_catalogue()])
        self._balance = None if balance_usd is None else round(balance_usd * 1_000_000)
        self._spent = 0
        self._catalogue_fetches = 0
        self._nonces: set[str] = set()
        self._rate_window: collections.deque[float] = collections.deque()
        self._failures: collections.deque[float] = collections.deque()
        self._locked_until: float | None = None
        self._lockouts = 0

    @property
    def base_url(self) -> str:
        return f"{self.origin}/api/v1"

    # ---------------------------------------------------------------- money

    @property
    def balance_usd(self) -> float | None:
        """What is left to spend; None: unlimited."""
        with self._lock:
            return None if self._balance is None else self._balance / 1_000_000

    @balance_usd.setter
    def balance_usd(self, value: float | None) -> None:
        with self._lock:
            self._balance = None if value is None else round(value * 1_000_000)

    @property
    def spent_usd(self) -> float:
        with self._lock:
            return self._spent / 1_000_000

    def top_up(self, amount: float) -> None:
        """Add `amount` dollars (a no-op while the balance is unlimited)."""
        with self._lock:
            if self._balance is not None:
                self._balance += round(amount * 1_000_000)

    # ---------------------------------------------------------------- catalogue

    @property
    def catalogue(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._catalogue)

    @catalogue.setter
    def catalogue(self, entries: Sequence[Mapping[str, Any]]) -> None:
        fresh = copy.deepcopy([dict(entry) for entry in entries])
        with self._lock:
            self._catalogue = fresh

    @property
    def catalogue_fetches(self) -> int:
        with self._lock:
            return self._catalogue_fetches

    # ---------------------------------------------------------------- lock-out

    @property
    def locked_out(self) -> bool:
        return self._locked(self.clock())

    @property
    def lockouts(self) -> int:
        """How many times the lock-out has tripped."""
        with self._lock:
            return self._lockouts

    def failures_in_window(self) -> int:
        """Non-2xx edit replies within the last `lockout_window` seconds (by `clock`)."""
        now = self.clock()
        with self._lock:
            return sum(1 for moment in self._failures if moment > now - self.lockout_window)

    def reset_counters(self) -> None:
        """Zero the request counters; money, nonces, rate window and lock-out are kept."""
        with self._lock:
            self._clear_counters()
            self._catalogue_fetches = 0

    @staticmethod
    def fingerprint(image: bytes, mask: bytes | None, prompt: str, model: str) -> str:
        """As `FakeProvider.fingerprint`; a multi-edit's mask is its second image."""
        return fingerprint(digest(image), digest(mask) if mask is not None else None, prompt, model)

    @staticmethod
    def edited_image(image: bytes, mask: bytes | None = None, fmt: OutputFormat = "png") -> bytes:
        """The bytes a successful edit of `image` (and same-sized `mask`) comes back as."""
        return edited_image_as(image, mask, fmt)

    # ---------------------------------------------------------------- used by the handler

    def _echo(self, text: str, suffix: str = " (key {key})") -> str:
        """`text` with the key appended when this fake plays a provider that echoes it."""
        if not (self.echo_key and self.api_key):
            return text
        return text + suffix.format(key=self.api_key)

    def _begin(self) -> str:
        """Count one edit request and return its CF-RAY."""
        return self._echo(f"{self._count_request():016x}-FAKE", "-{key}")

    def _note_catalogue_fetch(self) -> tuple[bool, list[dict[str, Any]]]:
        with self._lock:
            self._catalogue_fetches += 1
            return self.catalogue_down, copy.deepcopy(self._catalogue)

    def _model(self, model_id: str) -> dict[str, Any] | None:
        with self._lock:
            for entry in self._catalogue:
                if entry.get("id") == model_id:
                    return copy.deepcopy(entry)
        return None

    def _locked(self, now: float) -> bool:
        with self._lock:
            return self._locked_until is not None and now < self._locked_until

    def _authenticate(self, headers: Mapping[str, str], now: float) -> Credentials | ErrorReply:
        """Who is asking; kind "none" from a fake that wants credentials means a 402."""
        authorization = headers.get("authorization")
        siwx = headers.get("sign-in-with-x") or headers.get("x-sign-in-with-x")
        open_door = self.api_key is None and self.wallet is None
        if authorization is not None and (self.api_key is not None or siwx is None):
            if open_door or authorization == f"Bearer {self.api_key}":
                return Credentials("api_key")
            return error(401, "Authentication failed", "AUTHENTICATION_FAILED")
        if siwx is not None:
            return self._sign_in(siwx, now)
        return Credentials("none")

    def _sign_in(self, header: str, now: float) -> Credentials | ErrorReply:
        from runner.dialects.venice.siwx import verify_header  # eth-account takes ~1.5 s to import

        try:
            claims = verify_header(header, now)
        except Exception as exc:  # SiwxInvalid, and anything a garbled header provokes
            return error(401, f"Invalid SIGN-IN-WITH-X header: {exc}", "X402_INVALID_SIGN_IN")
        if self.wallet is not None and claims.address.lower() != self.wallet.lower():
            return error(
                401, "SIGN-IN-WITH-X is signed by an unknown wallet", "X402_INVALID_SIGN_IN"
            )
        with self._lock:
            if claims.nonce in self._nonces:
                return error(
                    401, "SIGN-IN-WITH-X nonce has already been used", "X402_INVALID_SIGN_IN"
                )
            self._nonces.add(claims.nonce)
        return Credentials("wallet", claims.address, claims.nonce)

    def _admit(self, now: float) -> tuple[bool, list[tuple[str, str]]]:
        """Take a slot of the rate window; False when it is full. Also the headers."""
        limit = self.rate_limit_per_minute
        if limit is None:
            return True, []
        with self._lock:
            window = self._rate_window
            while window and window[0] <= now - RATE_WINDOW_S:
                window.popleft()
            admitted = len(window) < limit
            if admitted:
                window.append(now)
            reset = (window[0] if window else now) + RATE_WINDOW_S
            remaining = max(0, limit - len(window))
        return admitted, [
            ("x-ratelimit-limit-requests", str(limit)),
            ("x-ratelimit-remaining-requests", str(remaining)),
            ("x-ratelimit-reset-requests", self._reset_stamp(reset)),
        ]

    def _reset_stamp(self, moment: float) -> str:
        """`x-ratelimit-reset-requests`: a Unix timestamp, in seconds unless `reset_in_ms`."""
        return str(math.ceil(moment * 1000) if self.reset_in_ms else math.ceil(moment))

    def _choose_fault(self) -> str | None:
        with self._lock:
            return self._draw_fault_locked()

    def _charge(self, price: int) -> Charge | None:
        """Deduct `price` micro-dollars; None when the balance does not cover it."""
        with self._lock:
            before = self._balance
            if before is not None:
                if before < price:
                    return None
                self._balance = before - price
            self._spent += price
            return Charge(price, before, self._balance)

    def _refund(self, charge: Charge) -> None:
        with self._lock:
            if self._balance is not None:
                self._balance += charge.price
            self._spent -= charge.price

    def _balance_headers(self, kind: AuthKind, before: int | None = None) -> list[tuple[str, str]]:
        """`x-venice-balance-*` (balance before the request), on authenticated requests."""
        with self._lock:
            balance = self._balance if before is None else before
        if kind == "none" or balance is None:
            return []
        return [
            ("x-venice-balance-usd", format_usd(balance)),
            ("x-venice-balance-diem", format_usd(round(self.balance_diem * 1_000_000))),
        ]

    def _record(self, request: VeniceRequest, *, paid: bool, failure: bool, now: float) -> None:
        with self._lock:
            self._status_counts[request.status] += 1
            self._requests.append(request)
            if paid:
                self._paid[request.fingerprint] += 1
            if failure:
                failures = self._failures
                while failures and failures[0] <= now - self.lockout_window:
                    failures.popleft()
                failures.append(now)
                if len(failures) > self.lockout_threshold:
                    self._locked_until = now + self.lockout_duration
                    self._lockouts += 1
                    failures.clear()
