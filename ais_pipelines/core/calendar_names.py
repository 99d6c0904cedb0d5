"""Calendar names per asset class (§B3): what the policy loader validates against, without
pandas — ``ais review list`` and the other ledger commands load the policies but never a calendar."""

from __future__ import annotations

from functools import lru_cache

from ais_pipelines.core.asset_classes import AssetClass

# The folder of the session tables' cache (core.calendars.session_table); the runtime sets it.
CALENDAR_CACHE_ENV = "AIS_CALENDAR_CACHE_DIR"

# Default calendar per asset class; policies/universe.yaml may override per class or symbol.
DEFAULT_CALENDARS: dict[AssetClass, str] = {
    AssetClass.STOCKS: "XNYS",
    AssetClass.FX: "24/5",
    AssetClass.CRYPTO: "24/7",
    AssetClass.COMMODITIES: "XNYS",  # commodity exposure is traded through NYSE-listed ETFs
}


@lru_cache(maxsize=1)
def known_calendar_names() -> frozenset[str]:
    """Every name ``exchange_calendars`` resolves (canonical names and aliases, e.g. XNYS, NYSE, 24/7)."""
    import exchange_calendars as xcals

    return frozenset(xcals.get_calendar_names(include_aliases=True))


def calendar_name(asset_class: AssetClass | str, override: str | None = None) -> str:
    return override or DEFAULT_CALENDARS[AssetClass(asset_class)]
