"""Brokers behind one interface (§I4): embedded paper broker, shadow wrapper; live refused."""

from ais_pipelines.brokers.base import (
    Broker,
    BrokerAccount,
    BrokerError,
    BrokerFill,
    BrokerMode,
    BrokerOrder,
    BrokerPosition,
    BrokerRejectedError,
    BrokerUnavailableError,
    LiveTradingRefusedError,
    OrderSide,
    OrderType,
    ShadowBroker,
    make_broker,
    resolve_mode,
)
from ais_pipelines.brokers.paper import PaperBroker, PaperBrokerConfig, Quote, QuoteSource

__all__ = [
    "Broker",
    "BrokerAccount",
    "BrokerError",
    "BrokerFill",
    "BrokerMode",
    "BrokerOrder",
    "BrokerPosition",
    "BrokerRejectedError",
    "BrokerUnavailableError",
    "LiveTradingRefusedError",
    "OrderSide",
    "OrderType",
    "PaperBroker",
    "PaperBrokerConfig",
    "Quote",
    "QuoteSource",
    "ShadowBroker",
    "make_broker",
    "resolve_mode",
]
