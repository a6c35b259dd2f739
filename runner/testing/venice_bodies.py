"""What the fake Venice answers when it does not answer an image (PROVIDERS.md §3).

Most errors are Venice's `StandardError`, `{"error": "<message>"}` with an optional machine
`code`; 400s from the schema are `DetailedError`, which adds zod-style `details`. The three
402 shapes are those of swagger's `X402InferencePaymentRequired`.
"""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "ERRORS",
    "RECEIVER_WALLET",
    "USDC_BASE",
    "VENICE_FAULTS",
    "ErrorReply",
    "detailed",
    "discovery_402",
    "error",
    "key_402",
    "lockout_429",
    "siwx_challenge",
    "wallet_402",
]

VENICE_FAULTS = (
    "rate_limit",
    "model_overloaded",
    "overloaded",
    "server_error",
    "timeout_504",
    "payment_key",
    "payment_x402_discovery",
    "payment_wallet",
    "invalid_sign_in",
    "auth",
    "content_policy",
    "bad_request",
    "model_not_found",
)

# The sign-in constants of runner.siwx, repeated so that importing the fake does not pay
# for eth-account's import (about 1.5 s); runner.siwx is imported only to verify a header.
SIWX_DOMAIN = "api.venice.ai"
SIWX_URI = "https://api.venice.ai"
SIWX_STATEMENT = "Sign in to Venice API"
SIWX_CHAIN = "eip155:8453"  # Base
SIWX_TTL_S = 600.0

USDC_BASE = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"  # USDC on Base, 6 decimals
RECEIVER_WALLET = "0x000000000000000000000000000000000000FaCe"  # the fake's own pay-to
MINIMUM_TOP_UP_USD = 5.0
SUGGESTED_TOP_UP_USD = 10.0


@dataclass(frozen=True, slots=True)
class ErrorReply:
    status: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()
    code: str = ""  # the machine code, also when the body leaves it out

    def encoded(self) -> bytes:
        return json.dumps(self.body).encode()


def error(status: int, message: str, code: str | None = None) -> ErrorReply:
    body: dict[str, Any] = {"error": message}
    if code is not None:
        body["code"] = code
    return ErrorReply(status, body, code=code or "")


def detailed(message: str, problems: dict[str, str]) -> ErrorReply:
    """A 400 `DetailedError`: one zod `_errors` list per offending field ("" = the object)."""
    details: dict[str, Any] = {"_errors": []}
    for field, problem in problems.items():
        if field:
            details[field] = {"_errors": [problem]}
        else:
            details["_errors"].append(problem)
    return ErrorReply(400, {"error": message, "details": details}, code="INVALID_REQUEST")


ERRORS: dict[str, ErrorReply] = {
    "rate_limit": error(429, "Rate limit exceeded. Please try again later.", "RATE_LIMIT_EXCEEDED"),
    "model_overloaded": error(
        429, "The model is overloaded. Please try again later.", "MODEL_OVERLOADED"
    ),
    "overloaded": error(
        503, "The model is at capacity. Please try again later.", "MODEL_AT_CAPACITY"
    ),
    "server_error": error(500, "Inference processing failed", "INFERENCE_FAILED"),
    "timeout_504": error(504, "The request timed out", "REQUEST_TIMEOUT"),
    # Whether the real API-key 402 carries `code` at all is UNCONFIRMED (PROVIDERS.md §3);
    # public code has seen only the message. FakeVenice(payment_key_code=False) drops it.
    "payment_key": error(
        402, "Insufficient USD or Diem balance to complete request", "INSUFFICIENT_BALANCE"
    ),
    "invalid_sign_in": error(
        401, "Invalid or expired SIGN-IN-WITH-X header", "X402_INVALID_SIGN_IN"
    ),
    "auth": error(401, "Authentication failed", "AUTHENTICATION_FAILED"),
    "content_policy": error(
        422, "The request was rejected for a content policy violation", "CONTENT_POLICY_VIOLATION"
    ),
    "bad_request": detailed(
        "Invalid request parameters",
        {"aspect_ratio": "Invalid enum value. Expected 'auto' | '1:1', received '7:5'"},
    ),
    "model_not_found": error(404, "Model not found", "MODEL_NOT_FOUND"),
}


def key_402(with_code: bool) -> ErrorReply:
    reply = ERRORS["payment_key"]
    if with_code:
        return reply
    return ErrorReply(402, {"error": reply.body["error"]}, code="INSUFFICIENT_BALANCE")


def lockout_429(threshold: int) -> ErrorReply:
    return error(429, f"Too many failed attempts (> {threshold}). Please try again later.")


def _iso(moment: float) -> str:
    stamp = datetime.fromtimestamp(moment, tz=UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def siwx_challenge(now: float) -> dict[str, Any]:
    return {
        "info": {
            "domain": SIWX_DOMAIN,
            "uri": SIWX_URI,
            "version": "1",
            "nonce": secrets.token_hex(8),
            "issuedAt": _iso(now),
            "expirationTime": _iso(now + SIWX_TTL_S),
            "statement": SIWX_STATEMENT,
        },
        "supportedChains": [{"chainId": SIWX_CHAIN, "type": "eip191"}],
    }


def discovery_402(resource_url: str, price_micro_usd: int, now: float) -> ErrorReply:
    """No credentials at all: x402 v2 payment requirements, also in `PAYMENT-REQUIRED`."""
    requirements: dict[str, Any] = {
        "x402Version": 2,
        "error": "Payment required: sign in with a wallet (SIGN-IN-WITH-X) or use an API key",
        "resource": {
            "url": resource_url,
            "description": "Venice image edit",
            "mimeType": "image/png",
        },
        "accepts": [
            {
                "scheme": "exact",
                "network": SIWX_CHAIN,
                "asset": USDC_BASE,
                "amount": str(price_micro_usd),  # USDC base units: 6 decimals = micro-USD
                "payTo": RECEIVER_WALLET,
                "maxTimeoutSeconds": 300,
                "extra": {"name": "USD Coin", "version": "2"},
            }
        ],
        "extensions": {"sign-in-with-x": siwx_challenge(now)},
    }
    body = {
        **requirements,
        "authOptions": {
            "apiKey": {
                "header": "Authorization: Bearer <key>",
                "getKey": "https://venice.ai/settings/api",
                "docs": "https://docs.venice.ai/overview/getting-started",
            },
            "x402Wallet": {
                "header": "SIGN-IN-WITH-X",
                "legacyHeader": "X-Sign-In-With-X",
                "topUp": "POST /api/v1/x402/top-up",
                "docs": "https://docs.venice.ai/guides/integrations/x402-venice-api",
            },
        },
    }
    header = base64.b64encode(json.dumps(requirements).encode()).decode("ascii")
    return ErrorReply(402, body, (("PAYMENT-REQUIRED", header),), code="PAYMENT_REQUIRED")


def wallet_402(balance_usd: float, price_usd: float, now: float) -> ErrorReply:
    """A signed-in wallet whose prepaid credit does not cover the request."""
    body = {
        "error": "Payment required",
        "code": "PAYMENT_REQUIRED",
        "reason": "insufficient_balance",
        "message": (
            f"Insufficient x402 balance: ${balance_usd:.4f} available, ${price_usd:.4f} "
            "required. Top up with USDC to continue."
        ),
        "currentBalanceUsd": balance_usd,
        "minimumBalanceUsd": price_usd,
        "suggestedTopUpUsd": SUGGESTED_TOP_UP_USD,
        "minimumTopUpUsd": MINIMUM_TOP_UP_USD,
        "supportedTokens": ["USDC"],
        "supportedChains": ["base", "solana"],
        "topUpInstructions": {
            "step1": "POST /api/v1/x402/top-up without a payment header to get the requirements",
            "step2": "Sign one of the accepted options with an x402 client",
            "step3": "Send the same request again with the PAYMENT-SIGNATURE header",
            "receiverWallet": RECEIVER_WALLET,
            "tokenAddress": USDC_BASE,
            "tokenDecimals": 6,
            "network": "base",
            "minimumAmountUsd": MINIMUM_TOP_UP_USD,
        },
        "siwxChallenge": siwx_challenge(now),
    }
    return ErrorReply(402, body, code="PAYMENT_REQUIRED")
