"""The one way money is written: `format_usd`."""

from __future__ import annotations

import math


def format_usd(usd: float | None, places: int = 6, *, fixed: bool = False) -> str:
    """Dollars with cents: `$12.50`, `$1,234.00`. Below a cent's precision, up to `places`
    decimals where they matter (`$0.0035`; a price list). `fixed`: a running total that
    should not jitter on a live line: cents from a dollar up, else exactly `places`
    decimals (`$0.0400`). None or NaN (unknown) is `?`."""
    if usd is None or not math.isfinite(usd):
        return "?"
    if fixed:
        return f"${usd:,.2f}" if abs(usd) >= 1 else f"${usd:.{places}f}"
    whole, _, decimals = f"{usd:,.{places}f}".partition(".")
    return f"${whole}.{decimals.rstrip('0').ljust(2, '0')}"
