"""§A3/§A4: provider selection and entitlements over the shipped capability matrix."""

from __future__ import annotations

import pytest

from ais_pipelines.config import Policies
from ais_pipelines.core.asset_classes import AssetClass
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.market_data.routing import (
    NO_VALID_PROVIDER,
    entitled_providers,
    explain_selection,
    select_provider,
)


@pytest.fixture(scope="module")
def matrix():
    return Policies().providers


def test_entitlements_come_from_environment(matrix):
    assert entitled_providers(matrix, {}) == {"sample", "files", "binance"}
    env = {"APCA_API_KEY_ID": "k", "APCA_API_SECRET_KEY": "s", "AIS_YAHOO_ENABLED": "1"}
    assert entitled_providers(matrix, env) == {"sample", "files", "binance", "alpaca", "yahoo"}
    # A blank variable is not an entitlement; one of two Alpaca keys is not enough.
    assert "alpaca" not in entitled_providers(matrix, {"APCA_API_KEY_ID": "k", "APCA_API_SECRET_KEY": " "})


def test_long_history_prefers_yahoo_over_alpaca(matrix):
    entitled = {"yahoo", "alpaca", "sample"}
    assert select_provider("AAPL", 1900, "history", entitled, matrix=matrix) == "yahoo"
    # Without yahoo, alpaca's 730-day cap disqualifies it for 5 years of history.
    assert select_provider("AAPL", 1900, "history", {"alpaca"}, matrix=matrix) == NO_VALID_PROVIDER
    assert select_provider("AAPL", 500, "history", {"alpaca"}, matrix=matrix) == "alpaca"


def test_live_quotes_and_execution_come_from_alpaca(matrix):
    entitled = {"yahoo", "alpaca"}
    assert select_provider("AAPL", 5, "live_quotes", entitled, matrix=matrix) == "alpaca"
    assert select_provider("AAPL", 5, "execution", entitled, matrix=matrix) == "alpaca"
    assert select_provider("AAPL", 5, "live_quotes", {"yahoo"}, matrix=matrix) == NO_VALID_PROVIDER


def test_live_path_never_pulls_more_than_730_days(matrix):
    sel = explain_selection("AAPL", 731, "live_quotes", {"alpaca"}, matrix=matrix)
    assert sel.provider == NO_VALID_PROVIDER
    assert sel.skipped[0][1] == ReasonCode.HISTORY_LIMIT_EXCEEDED
    assert select_provider("AAPL", 730, "live_quotes", {"alpaca"}, matrix=matrix) == "alpaca"


def test_asset_class_routing_and_reasons(matrix):
    # FX: yahoo serves it; alpaca does not.
    assert select_provider("EUR/USD", 1800, "history", {"alpaca", "yahoo"}, matrix=matrix) == "yahoo"
    assert select_provider("EUR/USD", 500, "history", {"alpaca"}, matrix=matrix) == NO_VALID_PROVIDER
    # Crypto without yahoo or polygon: binance (free, implemented) serves it; skips say why.
    sel = explain_selection("BTC/USD", 1300, "history", {"binance"}, matrix=matrix, asset_class=AssetClass.CRYPTO)
    assert sel.provider == "binance"
    reasons = {p: r for p, r, _ in sel.skipped}
    assert reasons["yahoo"] == ReasonCode.PROVIDER_NOT_ENTITLED
    assert reasons["polygon"] == ReasonCode.PROVIDER_NOT_ENTITLED
    # Binance's 3650-day cap; polygon before binance when entitled.
    assert select_provider("BTC/USD", 4000, "history", {"binance"}, matrix=matrix) == NO_VALID_PROVIDER
    assert select_provider("BTC/USD", 1300, "history", {"binance", "polygon"}, matrix=matrix) == "polygon"


def test_polygon_binance_fred_routing(matrix):
    env = {"POLYGON_API_KEY": "p", "FRED_API_KEY": "f"}
    entitled = entitled_providers(matrix, env)
    assert {"polygon", "fred", "binance"} <= entitled and "yahoo" not in entitled
    assert select_provider("AAPL", 1900, "history", entitled, matrix=matrix) == "polygon"
    assert select_provider("EUR/USD", 1900, "history", entitled, matrix=matrix) == "polygon"
    # FX with fred only: the H.10 reference rates; stocks are not served by fred.
    assert select_provider("EUR/USD", 1900, "history", {"fred"}, matrix=matrix) == "fred"
    assert select_provider("AAPL", 1900, "history", {"fred", "binance"}, matrix=matrix) == NO_VALID_PROVIDER
    # polygon's 7300-day cap; commodities ETFs are not in its declared classes.
    assert select_provider("AAPL", 8000, "history", {"polygon"}, matrix=matrix) == NO_VALID_PROVIDER
    assert select_provider("GLD", 1900, "history", {"polygon"}, matrix=matrix, asset_class=AssetClass.COMMODITIES) \
        == NO_VALID_PROVIDER


def test_select_provider_never_raises(matrix):
    assert select_provider("AAPL", 10, "nonsense", set(), matrix=matrix) == NO_VALID_PROVIDER  # type: ignore[arg-type]
    assert select_provider("", -1, "history", set(), matrix=matrix) == NO_VALID_PROVIDER
