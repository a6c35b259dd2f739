"""x402 wallet sign-in: the `SIGN-IN-WITH-X` header Venice accepts instead of an API key.

The header is base64 of a JSON object `{address, message, signature, timestamp, chainId}`
where `message` is an EIP-4361 (Sign-In with Ethereum) text for api.venice.ai on Base
(chain 8453) and `signature` its EIP-191 personal signature (PROVIDERS.md §3). Signing and
recovery are eth-account's; nothing here does cryptography of its own. A fresh nonce and
timestamps go into every header, so a captured header stops working within minutes.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from runner.errors import ManifestError

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

VENICE_DOMAIN = "api.venice.ai"
VENICE_URI = "https://api.venice.ai"
BASE_CHAIN_ID = 8453
STATEMENT = "Sign in to Venice API"
HEADER = "SIGN-IN-WITH-X"
TTL_S = 600.0


def _iso(moment: float) -> str:
    stamp = datetime.fromtimestamp(moment, tz=UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def siwe_message(address: str, nonce: str, issued_at: float, expires_at: float) -> str:
    """The EIP-4361 text, field order and blank lines as the standard lays them out."""
    return (
        f"{VENICE_DOMAIN} wants you to sign in with your Ethereum account:\n"
        f"{address}\n\n{STATEMENT}\n\n"
        f"URI: {VENICE_URI}\nVersion: 1\nChain ID: {BASE_CHAIN_ID}\nNonce: {nonce}\n"
        f"Issued At: {_iso(issued_at)}\nExpiration Time: {_iso(expires_at)}"
    )


class SiwxSigner:
    """Makes one fresh header per request from an EVM private key held only in memory."""

    def __init__(
        self, private_key: str, *, env_name: str, clock: Callable[[], float] = time.time
    ) -> None:
        from eth_account import Account  # ~0.6 s to import: only for wallet profiles

        try:
            self._account: LocalAccount = Account.from_key(private_key.strip())
        except (ValueError, TypeError, binascii.Error) as exc:
            # The library's message may quote the key; ours names only where it came from.
            raise ManifestError(
                f"${env_name} does not hold an EVM private key (64 hex digits)"
            ) from exc
        self._clock = clock

    @property
    def address(self) -> str:
        return str(self._account.address)

    def header(self) -> str:
        from eth_account.messages import encode_defunct

        now = self._clock()
        message = siwe_message(self.address, secrets.token_hex(8), now, now + TTL_S)
        signed = self._account.sign_message(encode_defunct(text=message))
        payload = {
            "address": self.address,
            "message": message,
            "signature": "0x" + bytes(signed.signature).hex(),
            "timestamp": int(now * 1000),
            "chainId": BASE_CHAIN_ID,
        }
        return base64.b64encode(json.dumps(payload).encode()).decode("ascii")

    def __repr__(self) -> str:  # never the key, even in a debugger or a traceback
        return f"SiwxSigner(address={self.address})"


@dataclass(frozen=True, slots=True)
class SiwxClaims:
    address: str
    message: str
    nonce: str
    chain_id: int
    issued_at: datetime
    expires_at: datetime


class SiwxInvalid(ValueError):
    """A header that does not prove what it claims (what the server answers 401 to)."""


def _field(message: str, name: str) -> str:
    for line in message.splitlines():
        if line.startswith(name + ": "):
            return line[len(name) + 2 :]
    raise SiwxInvalid(f"message has no {name}")


def _when(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise SiwxInvalid(f"bad timestamp {text!r}") from exc


def verify_header(header: str, now: float) -> SiwxClaims:
    """What a server does with the header: decode, check the message, recover the signer.

    Used by the fake provider, so the tests prove the runner's headers would be accepted.
    """
    try:
        payload = json.loads(base64.b64decode(header, validate=True))
        address, message = str(payload["address"]), str(payload["message"])
        signature = str(payload["signature"])
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise SiwxInvalid("header is not base64 JSON with address, message, signature") from exc
    lines = message.splitlines()
    if len(lines) < 2 or lines[0] != f"{VENICE_DOMAIN} wants you to sign in with your " + (
        "Ethereum account:"
    ):
        raise SiwxInvalid("message is not an EIP-4361 sign-in for " + VENICE_DOMAIN)
    if lines[1] != address:
        raise SiwxInvalid("message is for another address")
    if _field(message, "URI") != VENICE_URI or _field(message, "Version") != "1":
        raise SiwxInvalid("wrong URI or version")
    chain_id = int(_field(message, "Chain ID"))
    if chain_id != BASE_CHAIN_ID or payload.get("chainId") not in (chain_id, f"eip155:{chain_id}"):
        raise SiwxInvalid(f"chain {chain_id} is not Base ({BASE_CHAIN_ID})")
    issued, expires = _when(_field(message, "Issued At")), _when(_field(message, "Expiration Time"))
    moment = datetime.fromtimestamp(now, tz=UTC)
    if not issued - timedelta(seconds=60) <= moment < expires:
        raise SiwxInvalid("sign-in is expired or not yet valid")
    from eth_account import Account
    from eth_account.messages import encode_defunct

    try:
        signer = Account.recover_message(encode_defunct(text=message), signature=signature)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise SiwxInvalid("signature does not recover") from exc
    if signer.lower() != address.lower():
        raise SiwxInvalid("signature is not the address's")
    return SiwxClaims(address, message, _field(message, "Nonce"), chain_id, issued, expires)
