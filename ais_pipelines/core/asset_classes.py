"""Asset classes (§A1) and the deterministic fallback classifier."""

from __future__ import annotations

import re
from enum import StrEnum


class AssetClass(StrEnum):
    STOCKS = "STOCKS"
    FX = "FX"
    CRYPTO = "CRYPTO"
    COMMODITIES = "COMMODITIES"


_CRYPTO_BASES = {"BTC", "ETH", "SOL", "ADA", "XRP", "DOGE", "LTC", "DOT", "AVAX", "LINK", "BNB", "USDT"}
_FX_CCY = {"USD", "EUR", "JPY", "GBP", "CHF", "AUD", "CAD", "NZD", "SEK", "NOK", "CNH", "MXN"}
_COMMODITY_ROOTS = {"GC", "SI", "CL", "NG", "HG", "ZC", "ZW", "ZS", "PL", "PA", "BZ"}
_COMMODITY_ETFS = {"GLD", "SLV", "USO", "UNG", "DBC", "PDBC", "CPER", "DBA", "IAU", "PPLT"}


def classify_symbol(symbol: str) -> AssetClass:
    """Classify a symbol by its spelling when the universe does not declare a class.

    Deterministic and total: anything unrecognised is a stock, the most common case and the
    one with the strictest (exchange) calendar.
    """
    s = symbol.upper().strip()
    base = re.split(r"[-/]", s)[0]
    if s.endswith(("-USD", "/USD", "USDT")) and base in _CRYPTO_BASES or base in _CRYPTO_BASES:
        return AssetClass.CRYPTO
    if s.endswith("=X") or (
        len(s.replace("/", "")) == 6 and s.replace("/", "")[:3] in _FX_CCY and s.replace("/", "")[3:] in _FX_CCY
    ):
        return AssetClass.FX
    if s.endswith("=F") and s[:-2] in _COMMODITY_ROOTS or s in _COMMODITY_ETFS:
        return AssetClass.COMMODITIES
    return AssetClass.STOCKS
