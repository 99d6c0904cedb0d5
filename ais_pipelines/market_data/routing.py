"""Provider selection (§A3) and entitlements (§A4): pure functions over the capability matrix."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from ais_pipelines.config import ProvidersPolicy, Purpose
from ais_pipelines.core.asset_classes import AssetClass, classify_symbol
from ais_pipelines.core.reason_codes import ReasonCode

NO_VALID_PROVIDER: Final = "NO_VALID_PROVIDER"
LIVE_PURPOSES: Final = frozenset({"live_quotes", "execution"})


def entitled_providers(matrix: ProvidersPolicy, environ: Mapping[str, str]) -> frozenset[str]:
    """Providers this process may call: free ones, plus those whose variables are all set."""
    out = set()
    for name, cap in matrix.providers.items():
        if not cap.needs_entitlement or all(environ.get(var, "").strip() for var in cap.entitlement_env):
            out.add(name)
    return frozenset(out)


@dataclass(frozen=True)
class Selection:
    provider: str  # a provider name or NO_VALID_PROVIDER
    skipped: tuple[tuple[str, ReasonCode, str], ...]  # (provider, reason, detail) in routing order

    @property
    def ok(self) -> bool:
        return self.provider != NO_VALID_PROVIDER


def explain_selection(
    symbol: str,
    history_days: int,
    purpose: Purpose,
    entitled: frozenset[str] | set[str],
    *,
    matrix: ProvidersPolicy,
    asset_class: AssetClass | None = None,
) -> Selection:
    """Walk the routing preference for ``purpose`` and say why each provider was skipped."""
    klass = asset_class or classify_symbol(symbol)
    skipped: list[tuple[str, ReasonCode, str]] = []
    if purpose in LIVE_PURPOSES and history_days > matrix.live_history_limit_days:
        # §A6: live paths read the warehouse; they never pull long history.
        detail = f"{history_days} days requested on a {purpose} path (limit {matrix.live_history_limit_days})"
        return Selection(NO_VALID_PROVIDER, (("*", ReasonCode.HISTORY_LIMIT_EXCEEDED, detail),))
    for name in matrix.routing.get(purpose, []):
        cap = matrix.providers[name]
        if purpose not in cap.purposes:
            skipped.append((name, ReasonCode.NO_VALID_PROVIDER, f"does not serve {purpose}"))
        elif klass not in cap.asset_classes:
            skipped.append((name, ReasonCode.NO_VALID_PROVIDER, f"does not serve {klass}"))
        elif history_days > cap.max_history_days:
            skipped.append((name, ReasonCode.NO_VALID_PROVIDER, f"history {history_days}d > {cap.max_history_days}d"))
        elif name not in entitled:
            skipped.append((name, ReasonCode.PROVIDER_NOT_ENTITLED, "entitlement variables not set"))
        elif not cap.implemented:
            skipped.append((name, ReasonCode.PROVIDER_NOT_AVAILABLE, "declared, no client"))
        else:
            return Selection(name, tuple(skipped))
    return Selection(NO_VALID_PROVIDER, tuple(skipped))


def select_provider(
    symbol: str,
    history_days: int,
    purpose: Purpose,
    entitled: frozenset[str] | set[str],
    *,
    matrix: ProvidersPolicy,
    asset_class: AssetClass | None = None,
) -> str:
    """The first capable, entitled, implemented provider, or ``NO_VALID_PROVIDER``. Never raises."""
    try:
        return explain_selection(
            symbol, history_days, purpose, entitled, matrix=matrix, asset_class=asset_class
        ).provider
    except Exception:  # a routing bug must not crash ingestion: fail closed to "no provider"
        return NO_VALID_PROVIDER
