"""Market-data providers as one resource: which provider, where its data or server lives.

Clients are built on demand inside a run (never at import time). Entitlements and secrets
are read from the environment at that moment (§A4): an unentitled provider is never built.
"""

from __future__ import annotations

import os

import dagster as dg

from ais_pipelines.config import Policies
from ais_pipelines.market_data.base import HistoryProvider
from ais_pipelines.market_data.routing import entitled_providers


def sample_provider(policies: Policies) -> HistoryProvider:
    """The embedded sample market for the policy universe, with the declared demo defects."""
    from ais_pipelines.market_data.sample import SampleDefect, SampleInstrument, SampleProvider

    cfg = policies.providers.sample
    instruments = [
        SampleInstrument(i.symbol, i.resolved_class, i.sector, i.calendar) for i in policies.universe.symbols
    ]
    defects = [SampleDefect(**d.model_dump(exclude_none=True)) for d in cfg.defects]
    return SampleProvider(instruments, end=cfg.end_session, n_sessions=cfg.n_sessions, seed=cfg.seed, defects=defects)


class MarketDataResource(dg.ConfigurableResource):
    """``provider``: sample (default) | files | yahoo | alpaca | auto (route per symbol)."""

    provider: str = "sample"
    files_dir: str | None = None
    yahoo_base_url: str | None = None  # tests point the real client at a stub server
    alpaca_data_url: str | None = None
    polygon_base_url: str | None = None  # issue 16: tests point the real clients at stub servers
    binance_base_url: str | None = None
    fred_base_url: str | None = None

    def configured_provider(self, policies: Policies) -> str:
        return os.environ.get("AIS_DATA_PROVIDER") or self.provider or policies.providers.default_history_provider

    def entitled(self, policies: Policies) -> frozenset[str]:
        return entitled_providers(policies.providers, os.environ)

    def build(self, policies: Policies, names: set[str]) -> dict[str, HistoryProvider]:
        entitled = self.entitled(policies)
        retry = policies.providers.retry
        out: dict[str, HistoryProvider] = {}
        for name in sorted(names & entitled):
            if name == "sample":
                out[name] = sample_provider(policies)
            elif name == "files":
                from ais_pipelines.market_data.files import FilesProvider

                directory = self.files_dir or os.environ.get("AIS_FILES_DIR")
                if not directory:
                    raise dg.Failure("files provider selected but neither files_dir nor AIS_FILES_DIR is set")
                out[name] = FilesProvider(directory)
            elif name == "yahoo":
                from ais_pipelines.market_data.yahoo import YahooProvider

                out[name] = YahooProvider(
                    base_url=self.yahoo_base_url, max_attempts=retry.max_attempts,
                    backoff_initial_s=retry.initial_wait_s, backoff_max_s=retry.max_wait_s,
                )
            elif name == "alpaca":
                from ais_pipelines.market_data.alpaca import AlpacaHistoryProvider

                out[name] = AlpacaHistoryProvider(
                    api_key=os.environ["APCA_API_KEY_ID"], secret_key=os.environ["APCA_API_SECRET_KEY"],
                    url_override=self.alpaca_data_url, max_attempts=retry.max_attempts,
                    backoff_initial_s=retry.initial_wait_s, backoff_max_s=retry.max_wait_s,
                )
            elif name in ("polygon", "binance", "fred"):
                out[name] = rest_provider(name, policies, self)
        return out

    def providers_for_run(self, policies: Policies) -> tuple[str, dict[str, HistoryProvider]]:
        configured = self.configured_provider(policies)
        names = set(policies.providers.routing["history"]) if configured == "auto" else {configured}
        return configured, self.build(policies, names)


def rest_provider(name: str, policies: Policies, resource: MarketDataResource) -> HistoryProvider:
    """polygon / binance / fred over the shared HTTP client, keys read from the environment now."""
    r = policies.providers.retry
    common = {"max_attempts": r.max_attempts, "backoff_initial_s": r.initial_wait_s,
              "backoff_max_s": r.max_wait_s, "max_retry_after_s": r.max_retry_after_s}
    if name == "polygon":
        from ais_pipelines.market_data.polygon import PolygonProvider

        return PolygonProvider(os.environ["POLYGON_API_KEY"], base_url=resource.polygon_base_url, **common)
    if name == "binance":
        from ais_pipelines.market_data.binance import BinanceProvider

        return BinanceProvider(base_url=resource.binance_base_url, **common)
    from ais_pipelines.market_data.fred import FredProvider

    return FredProvider(os.environ["FRED_API_KEY"], base_url=resource.fred_base_url, **common)
