"""Fake image-edit providers over real HTTP, for tests, `runner demo` and benchmarks.

`FakeProvider` speaks the OpenAI/CometAPI `POST /v1/images/edits` dialect (see
`runner.testing.openai` for its accounting rules) and `FakeVenice` the Venice
`/api/v1/image/edit` and `/image/multi-edit` dialect (`runner.testing.venice`). Both are real
HTTP/1.1 servers on 127.0.0.1 that can be told to misbehave in every way the runner must
survive. The machinery they share lives in the other modules of this package; this module
keeps the public names and the command line (`python -m runner.testing`, see `__main__.py`).
"""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType

from runner.testing.imaging import CACHE_SIZE, edited_image
from runner.testing.openai import (
    EDIT_PATH,
    FAULTS,
    MAX_FILES,
    MAX_RECORDED,
    SLOW_EXTRA_SECONDS,
    FakeProvider,
    RecordedRequest,
)
from runner.testing.server import MAX_BODY_BYTES, validate_mix
from runner.testing.venice import VENICE_FAULTS, FakeVenice, VeniceRequest

__all__ = [
    "CACHE_SIZE",
    "EDIT_PATH",
    "FAULTS",
    "MAX_BODY_BYTES",
    "MAX_FILES",
    "MAX_RECORDED",
    "SLOW_EXTRA_SECONDS",
    "VENICE_FAULTS",
    "FakeProvider",
    "FakeVenice",
    "RecordedRequest",
    "VeniceRequest",
    "edited_image",
    "main",
]


# --------------------------------------------------------------------------- command line


def _parse_fault_mix(text: str) -> dict[str, float]:
    """NAME=P,... as a mapping; the names are checked once the dialect is known."""
    mix: dict[str, float] = {}
    for item in filter(None, (piece.strip() for piece in text.split(","))):
        name, equals, value = item.partition("=")
        if not equals:
            raise argparse.ArgumentTypeError(f"expected NAME=PROBABILITY, got {item!r}")
        try:
            mix[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a probability: {value!r}") from None
    return mix


def main(argv: list[str] | None = None) -> None:
    """Serve a fake provider until SIGTERM or SIGINT, printing its base URL first."""
    parser = argparse.ArgumentParser(
        prog="python -m runner.testing", description="Fake image-edit provider over HTTP."
    )
    parser.add_argument(
        "--dialect",
        choices=("openai", "venice"),
        default="openai",
        help="OpenAI/CometAPI /v1/images/edits (default) or Venice /api/v1/image/edit",
    )
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per edit")
    parser.add_argument(
        "--api-key", default="test-key", help="required bearer token; '' accepts any request"
    )
    parser.add_argument("--payment-after", type=int, default=None, metavar="K", help="openai")
    parser.add_argument(
        "--reply", choices=("b64_json", "url"), default="b64_json", help="openai only"
    )
    parser.add_argument("--wallet", default=None, help="venice: the SIWX wallet to accept")
    parser.add_argument(
        "--balance-usd", type=float, default=None, help="venice: prepaid balance (unlimited)"
    )
    parser.add_argument(
        "--rate-limit", type=int, default=20, metavar="RPM", help="venice: 0 = no limit"
    )
    parser.add_argument(
        "--fault-mix",
        type=_parse_fault_mix,
        default=None,
        metavar="NAME=P,...",
        help="random faults, e.g. rate_limit=0.1,server_error=0.05",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        validate_mix(args.fault_mix, VENICE_FAULTS if args.dialect == "venice" else FAULTS)
    except ValueError as exc:
        parser.error(f"argument --fault-mix: {exc}")

    provider: FakeProvider | FakeVenice
    if args.dialect == "venice":
        provider = FakeVenice(
            api_key=args.api_key or None,
            wallet=args.wallet,
            balance_usd=args.balance_usd,
            rate_limit_per_minute=args.rate_limit or None,
            latency=args.latency,
            fault_mix=args.fault_mix,
            seed=args.seed,
            port=args.port,
        )
    else:
        provider = FakeProvider(
            api_key=args.api_key or None,
            latency=args.latency,
            payment_after=args.payment_after,
            reply=args.reply,
            fault_mix=args.fault_mix,
            seed=args.seed,
            port=args.port,
        )

    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with provider:
            print(provider.base_url, flush=True)
            # A timed wait so that the signal handler gets to run promptly on every platform.
            while not done.wait(0.5):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
