"""The embedded sample market: a deterministic, offline, *synthetic* source of daily bars.

This is the default history provider (§A2) so that the whole pipeline, the demo and the tests
run without network access. Nothing here is real market data; it is a generative model whose
parameters were calibrated once to a real series and then frozen.

Model (all returns are log returns)
-----------------------------------
* **Market factor** on a *calendar-day* grid, so a weekend move (seen by 24/7 crypto on
  Saturday and Sunday) shows up in Monday's stock return. Weekdays follow a GARCH(1,1) with
  standardized Student-t shocks; weekend days carry 10 % of a weekday's variance and do not
  update the GARCH state.
* **Calibration** (``calibrate_from_sp500`` reproduces the frozen ``SP500_CALIBRATION``):
  GARCH(1,1)-t fitted by maximum likelihood (``arch``) to the daily log returns of the S&P 500
  sample that ships with ``arch`` (``arch.data.sp500``, 1999-2018). The shock tail (ν) and the
  news coefficient (α) are used as fitted. The fit is nearly integrated (α+β ≈ 0.9996), which
  over a 5-year simulation lets volatility wander without bound, so the simulation caps the
  persistence at 0.985 and targets the unconditional variance at the median fitted conditional
  variance (the "calm" level, ≈ 15 %/yr). Volume dynamics (AR(1) of log-volume residuals,
  loadings on |shock| and on the volatility level) come from the same series; they are index
  numbers and are scaled up (×2) for single names: an assumption, not a fit. The market drift
  (6 %/yr) is an assumption too.
* **One scripted crisis**: for ``crisis_length_sessions`` XNYS sessions ending
  ``crisis_end_offset_sessions`` before ``end`` the market variance is raised by
  (3.5² − 1)× the calm variance (so volatility is ≥ 3.35× calm), decaying with a 3-week
  half-life afterwards; the first 60 % of the window is forced to a −45 % log move (−36 %)
  and the rest to a +12 % rebound. The last ~130 sessions have the market variance capped
  near the calm level, so the sample does not end in a crisis.
* **Sector factors** (one per sector name, including "Currencies", "Digital Assets", ...)
  share the market's volatility state (vol ∝ state^0.4, so cross-sectional correlation rises
  in the crisis); the crypto sector factor keeps full variance at weekends. **Idiosyncratic**
  Student-t noise (ν 4-6 by asset class) scales with state^0.25. Target volatilities: FX
  6-10 %/yr, stocks 18-42 %, commodities 20-30 %, crypto 50-90 %.
* A planted, slowly mean-reverting expected return per symbol (AR(1), half-life about six
  months, 15 %/yr dispersion for stocks): the predictable part that gives time-series
  momentum, so the forecast models have something real to find. Synthetic by design.
* Per-symbol parameters (beta, sector loading, total volatility by asset class, drift,
  starting price, average daily dollar volume) and all per-symbol noise come from a generator
  seeded by ``sha256(seed, symbol)``: a symbol's path does not depend on the rest of the
  universe. Market and sector factors depend only on the seed and the date grid.
* **Bars**: the close-to-close return is split into an overnight gap (exchange calendars only)
  and an intraday Brownian bridge from open to close whose maximum and minimum are sampled
  exactly, so high ≥ max(open, close) and low ≤ min(open, close) by construction. Volume is
  lognormal around a per-symbol average daily dollar volume, rising with |return| and with the
  volatility state. ``adj_close`` equals ``close`` unless a split defect is injected.

Deliberate, deterministic data defects (``SampleDefect``) let the quality gates be exercised.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import date
from functools import lru_cache
from typing import Any, Final

import numpy as np
import pandas as pd

from ais_pipelines.core.asset_classes import AssetClass
from ais_pipelines.core.calendars import calendar_name, last_n_sessions
from ais_pipelines.market_data.base import (
    OPTIONAL_BAR_COLUMNS,
    RAW_BAR_COLUMNS,
    FetchResult,
    InstrumentRequest,
    ProviderEmptyError,
    RawRecords,
)

__all__ = [
    "DEFECT_KINDS",
    "GICS_SECTORS",
    "SAMPLE_COLUMNS",
    "SP500_CALIBRATION",
    "SampleCalibration",
    "SampleDefect",
    "SampleInstrument",
    "SampleProvider",
    "calibrate_from_sp500",
    "crisis_window",
    "generate_sample_bars",
    "market_factor_returns",
    "synthetic_universe",
]

SAMPLE_COLUMNS: Final[list[str]] = [*RAW_BAR_COLUMNS, *OPTIONAL_BAR_COLUMNS]
GENERATOR_NAME: Final = "ais_pipelines.market_data.sample"

GICS_SECTORS: Final[tuple[str, ...]] = (
    "Communication Services",
    "Consumer Discretionary",
    "Consumer Staples",
    "Energy",
    "Financials",
    "Health Care",
    "Industrials",
    "Information Technology",
    "Materials",
    "Real Estate",
    "Utilities",
)

DEFECT_KINDS: Final[tuple[str, ...]] = (
    # Application order: truncation first so later defects land inside the kept history,
    # row removal/duplication last so they never erase or copy another defect's row.
    "short_history",
    "split_jump",
    "stale",
    "return_spike",
    "volume_spike",
    "ohlc_inconsistent",
    "non_positive",
    "missing_sessions",
    "duplicate_dates",
)


# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SampleCalibration:
    """Numbers taken from the S&P 500 sample in ``arch`` (see ``calibrate_from_sp500``)."""

    garch_alpha: float  # fitted news coefficient
    garch_beta: float  # fitted persistence minus alpha (not used as is: see module docstring)
    garch_nu: float  # fitted Student-t degrees of freedom
    calm_daily_vol: float  # median fitted conditional volatility (fraction per session)
    volume_ar1: float  # AR(1) coefficient of log-volume residuals
    volume_resid_sd: float  # stationary sd of those residuals
    volume_absz_loading: float  # d log(volume) / d |standardized return|
    volume_vol_elasticity: float  # d log(volume) / d log(conditional volatility)


# Frozen output of calibrate_from_sp500() (arch 7, 5030 daily returns 1999-01-05..2018-12-31);
# tests/unit/test_sample_market.py re-fits and checks these numbers.
SP500_CALIBRATION: Final = SampleCalibration(
    garch_alpha=0.09949,
    garch_beta=0.90016,
    garch_nu=6.5096,
    calm_daily_vol=0.0093247,
    volume_ar1=0.5132,
    volume_resid_sd=0.18936,
    volume_absz_loading=0.07180,
    volume_vol_elasticity=0.17823,
)


def calibrate_from_sp500() -> SampleCalibration:
    """Re-derive ``SP500_CALIBRATION`` from ``arch.data.sp500`` (offline, < 1 s)."""
    from arch import arch_model  # local import: only needed to re-calibrate
    from arch.data import sp500

    data = sp500.load()
    r = 100.0 * np.log(data["Adj Close"]).diff().dropna()
    fit = arch_model(r, mean="Constant", vol="GARCH", p=1, q=1, dist="t").fit(disp="off")
    cond_vol = fit.conditional_volatility
    # Volume: log volume and log conditional vol as deviations from centred 250-day means
    # (removes the 20-year volume trend), regressed on |z| and the vol deviation.
    log_v = np.log(data["Volume"].astype(float)).reindex(r.index)
    log_cv = np.log(cond_vol)
    frame = pd.DataFrame(
        {
            "e": log_v - log_v.rolling(250, center=True).mean(),
            "absz": (r / cond_vol).abs(),
            "lvol": log_cv - log_cv.rolling(250, center=True).mean(),
        }
    ).dropna()
    design = np.column_stack([np.ones(len(frame)), frame["absz"], frame["lvol"]])
    coef, *_ = np.linalg.lstsq(design, frame["e"].to_numpy(), rcond=None)
    resid = pd.Series(frame["e"].to_numpy() - design @ coef)
    return SampleCalibration(
        garch_alpha=float(fit.params["alpha[1]"]),
        garch_beta=float(fit.params["beta[1]"]),
        garch_nu=float(fit.params["nu"]),
        calm_daily_vol=float(cond_vol.median() / 100.0),
        volume_ar1=float(resid.autocorr(1)),
        volume_resid_sd=float(resid.std()),
        volume_absz_loading=float(coef[1]),
        volume_vol_elasticity=float(coef[2]),
    )


CALIBRATION_DESCRIPTION: Final = (
    "synthetic; GARCH(1,1)-t market factor fitted to arch.data.sp500 (S&P 500 daily log returns "
    f"1999-2018): alpha={SP500_CALIBRATION.garch_alpha:.4f}, nu={SP500_CALIBRATION.garch_nu:.2f}, "
    "persistence capped at 0.985, unconditional vol = median fitted conditional vol "
    f"({SP500_CALIBRATION.calm_daily_vol * math.sqrt(252):.1%}/yr); log-volume AR(1) "
    f"phi={SP500_CALIBRATION.volume_ar1:.2f} from the same series; one scripted crisis "
    "(vol x3.5, -36% market fall); sector factors, Student-t idiosyncratic noise"
)

# Simulation constants (documented assumptions, not fits).
_PERSISTENCE_CAP: Final = 0.985
_WEEKEND_VAR_WEIGHT: Final = 0.10  # share of a weekday's market variance on Sat/Sun
_MARKET_DRIFT_ANNUAL: Final = 0.06
_CRISIS_VOL_MULT: Final = 3.5
_CRISIS_FALL_LOG: Final = -0.45
_CRISIS_REBOUND_LOG: Final = 0.12
_CRISIS_FALL_SHARE: Final = 0.6
_CRISIS_DECAY_HALF_LIFE_DAYS: Final = 21.0
_CALM_TAIL_SESSIONS: Final = 130
_CALM_TAIL_CAP: Final = 1.2  # max variance state (× calm) in the calm tail
_SECTOR_STATE_EXP: Final = 0.4
_IDIO_STATE_EXP: Final = 0.25
_SHOCK_CLIP: Final = 8.0  # standardized shocks are clipped: keeps tails fat but not absurd
_SINGLE_NAME_VOLUME_SCALE: Final = 2.0
_GAP_SHARE: Final = 0.3  # share of the close-to-close move realised overnight (exchanges)
_GAP_NOISE: Final = 0.25  # overnight noise (× session vol) that intraday trading reverses
_RANGE_SCALE: Final = 0.9  # bridge vol / session vol, sets median log(H/L)/vol near S&P's 1.14
_SPIKE_SIGMAS: Final = 12.0
_VOLUME_SPIKE: Final = 50.0

DEFAULT_CRISIS_END_OFFSET_SESSIONS: Final = 440  # ~1.75 years before `end`
DEFAULT_CRISIS_LENGTH_SESSIONS: Final = 60


# --------------------------------------------------------------------------------------------
# Public value types
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SampleInstrument:
    symbol: str
    asset_class: AssetClass
    sector: str
    calendar: str | None = None  # None → the asset class's default calendar


@dataclass(frozen=True)
class SampleDefect:
    """A deliberate, deterministic data defect for one symbol.

    Parameters (``None`` → the kind's default):
      * ``missing_sessions``: ``fraction`` of interior sessions dropped (0.05)
      * ``short_history``: only the last ``sessions`` sessions exist (250)
      * ``stale``: a run of ``sessions`` identical closes, flat OHLC (6)
      * ``split_jump``: unadjusted ``ratio``:1 split (2.0) on ``on`` (default: 60 % through the
        history); prices divide by ratio, volume multiplies, ``adj_close`` stays continuous
      * ``ohlc_inconsistent``: ``rows`` rows with high < max(open, close) (3)
      * ``duplicate_dates``: ``rows`` rows repeated with slightly different values (3)
      * ``non_positive``: ``rows`` rows with close 0, then negative (3)
      * ``return_spike``: ``rows`` one-day bad prints of ``magnitude`` × the symbol's return
        std (12) — each gives a jump and a reversal
      * ``volume_spike``: ``rows`` rows with volume × ``magnitude`` (50)
    """

    symbol: str
    kind: str
    fraction: float | None = None
    sessions: int | None = None
    rows: int | None = None
    on: date | None = None
    ratio: float = 2.0
    magnitude: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in DEFECT_KINDS:
            raise ValueError(f"unknown sample defect kind {self.kind!r}; expected one of {DEFECT_KINDS}")
        if self.fraction is not None and not 0.0 < self.fraction < 1.0:
            raise ValueError("fraction must be in (0, 1)")
        if self.sessions is not None and self.sessions < (2 if self.kind == "stale" else 1):
            raise ValueError("sessions too small")
        if self.rows is not None and self.rows < 1:
            raise ValueError("rows must be >= 1")
        if self.ratio <= 1.0:
            raise ValueError("split ratio must be > 1")
        if self.on is not None and not isinstance(self.on, date):
            object.__setattr__(self, "on", pd.Timestamp(self.on).date())  # YAML/ISO strings

    @classmethod
    def from_mapping(cls, spec: Mapping[str, Any]) -> SampleDefect:
        return cls(**dict(spec))


# --------------------------------------------------------------------------------------------
# Deterministic randomness
# --------------------------------------------------------------------------------------------
def _rng(seed: int, *parts: object) -> np.random.Generator:
    # sha256 of the labels: stable across processes (unlike hash()) and independent of order.
    digest = hashlib.sha256("|".join(["ais-sample", str(seed), *map(str, parts)]).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def _std_t(rng: np.random.Generator, nu: float, size: int | tuple[int, ...]) -> np.ndarray:
    """Unit-variance Student-t shocks, clipped at ±_SHOCK_CLIP."""
    z = rng.standard_t(nu, size) * math.sqrt((nu - 2.0) / nu)
    return np.clip(z, -_SHOCK_CLIP, _SHOCK_CLIP)


# --------------------------------------------------------------------------------------------
# Per-symbol parameters
# --------------------------------------------------------------------------------------------
_SECTOR_VOL: Final[dict[str, float]] = {
    "Communication Services": 0.12,
    "Consumer Discretionary": 0.12,
    "Consumer Staples": 0.08,
    "Energy": 0.18,
    "Financials": 0.12,
    "Health Care": 0.09,
    "Industrials": 0.10,
    "Information Technology": 0.13,
    "Materials": 0.12,
    "Real Estate": 0.12,
    "Utilities": 0.09,
    "Currencies": 0.06,
    "Digital Assets": 0.55,
    "Crypto": 0.55,
    "Precious Metals": 0.14,
    "Energy Commodities": 0.25,
    "Industrial Metals": 0.18,
    "Agriculture": 0.15,
    "Commodities": 0.16,
}

_FX_START: Final[dict[str, float]] = {
    "EURUSD": 1.10, "GBPUSD": 1.27, "AUDUSD": 0.68, "NZDUSD": 0.62, "USDJPY": 135.0,
    "USDCHF": 0.90, "USDCAD": 1.34, "USDSEK": 10.5, "USDNOK": 10.5, "USDCNH": 7.10,
    "USDMXN": 18.0, "EURJPY": 145.0, "EURGBP": 0.86, "EURCHF": 0.97, "GBPJPY": 170.0,
}  # fmt: skip
# Risk-on score per currency: a pair's market beta is proportional to base − quote.
_FX_RISK: Final[dict[str, float]] = {
    "AUD": 1.0, "NZD": 1.0, "MXN": 1.2, "CAD": 0.6, "NOK": 0.7, "SEK": 0.6, "EUR": 0.3,
    "GBP": 0.4, "CNH": 0.2, "USD": 0.0, "CHF": -0.3, "JPY": -0.6,
}  # fmt: skip
_CRYPTO_START: Final[dict[str, float]] = {
    "BTC": 30000.0, "ETH": 2000.0, "SOL": 60.0, "ADA": 0.40, "XRP": 0.50, "DOGE": 0.08,
    "LTC": 80.0, "DOT": 6.0, "AVAX": 15.0, "LINK": 7.0, "BNB": 300.0,
}  # fmt: skip
_CRYPTO_ADV: Final[dict[str, float]] = {"BTC": 1.5e10, "ETH": 8e9}
_COMMODITY_START: Final[dict[str, float]] = {
    "GLD": 170.0, "IAU": 35.0, "SLV": 22.0, "USO": 70.0, "UNG": 12.0, "DBC": 22.0, "PDBC": 14.0,
    "CPER": 24.0, "DBA": 20.0, "PPLT": 90.0, "GC=F": 1900.0, "SI=F": 23.0, "CL=F": 75.0,
    "NG=F": 3.0, "HG=F": 3.8, "ZC=F": 500.0, "ZW=F": 600.0, "ZS=F": 1300.0, "PL=F": 950.0,
}  # fmt: skip

# Idiosyncratic Student-t degrees of freedom per asset class.
_IDIO_NU: Final[dict[AssetClass, float]] = {
    AssetClass.STOCKS: 4.5,
    AssetClass.FX: 6.0,
    AssetClass.CRYPTO: 4.0,
    AssetClass.COMMODITIES: 5.0,
}


def _fx_ccys(symbol: str) -> tuple[str, str]:
    s = symbol.upper().replace("=X", "").replace("/", "").replace("-", "")
    return s[:3], s[3:6]


def _crypto_base(symbol: str) -> str:
    return symbol.upper().replace("/", "-").split("-")[0]


@dataclass(frozen=True)
class _SymbolParams:
    beta: float
    loading: float  # on its sector factor
    vol_annual: float  # target total volatility
    drift_annual: float  # idiosyncratic log drift on top of beta × market drift
    start_price: float
    adv_dollars: float


# Persistent expected-return dispersion (annualised std of the latent alpha) per asset class.
# Real markets show time-series momentum because expected returns drift slowly; a synthetic
# market without it would give the forecast models nothing to find. Half-life ~ 6 months.
_ALPHA_STD = {AssetClass.STOCKS: 0.25, AssetClass.FX: 0.04, AssetClass.CRYPTO: 0.40, AssetClass.COMMODITIES: 0.12}
_ALPHA_HALF_LIFE_SESSIONS = 252.0


def _planted_alpha(seed: int, inst: SampleInstrument, n: int) -> np.ndarray:
    """An AR(1) latent annual alpha path per symbol (its own RNG stream: universe-independent)."""
    rng = _rng(seed, "alpha", inst.symbol)
    phi = 0.5 ** (1.0 / _ALPHA_HALF_LIFE_SESSIONS)
    sd = _ALPHA_STD[AssetClass(inst.asset_class)]
    shocks = rng.standard_normal(n) * sd * math.sqrt(1.0 - phi * phi)
    out = np.empty(n)
    a = sd * rng.standard_normal()
    for t in range(n):
        a = phi * a + shocks[t]
        out[t] = a
    return out


def _symbol_params(inst: SampleInstrument, rng: np.random.Generator) -> _SymbolParams:
    # Always draw the same number of uniforms in the same order, whatever the class, so the
    # stream of noise that follows is laid out identically for every symbol.
    u = rng.random(8)
    ac = AssetClass(inst.asset_class)
    if ac is AssetClass.STOCKS:
        beta, loading = 0.6 + 0.7 * u[0], 0.6 + 0.5 * u[1]
        vol = 0.18 + 0.24 * u[2]
        drift = 0.05 * (u[3] - 0.5)
        price = math.exp(math.log(10.0) + u[4] * math.log(50.0))  # log-uniform 10..500
        adv = math.exp(math.log(5e6) + u[5] * math.log(100.0))  # log-uniform $5M..$500M
    elif ac is AssetClass.FX:
        base, quote = _fx_ccys(inst.symbol)
        beta = 0.12 * (_FX_RISK.get(base, 0.3) - _FX_RISK.get(quote, 0.3)) * (0.7 + 0.6 * u[0])
        usd_sign = 1.0 if quote == "USD" else -1.0 if base == "USD" else 0.2
        loading = usd_sign * (0.6 + 0.4 * u[1])  # the "Currencies" factor is USD weakness
        vol = 0.06 + 0.04 * u[2]
        drift = 0.02 * (u[3] - 0.5)
        price = _FX_START.get(base + quote, math.exp(math.log(0.6) + u[4] * math.log(250.0)))
        adv = math.exp(math.log(2e9) + u[5] * math.log(10.0))
    elif ac is AssetClass.CRYPTO:
        coin = _crypto_base(inst.symbol)
        beta, loading = 0.6 + 0.8 * u[0], 0.8 + 0.2 * u[1]
        vol = 0.50 + 0.40 * u[2]
        drift = 0.15 * (u[3] - 0.4)
        price = _CRYPTO_START.get(coin, math.exp(u[4] * math.log(100.0)))
        adv = _CRYPTO_ADV.get(coin, math.exp(math.log(2e8) + u[5] * math.log(20.0)))
    else:
        beta, loading = 0.1 + 0.4 * u[0], 0.7 + 0.3 * u[1]
        vol = 0.20 + 0.10 * u[2]
        drift = 0.04 * (u[3] - 0.5)
        price = _COMMODITY_START.get(inst.symbol.upper(), math.exp(math.log(10.0) + u[4] * math.log(20.0)))
        adv = math.exp(math.log(2e7) + u[5] * math.log(100.0))
    if ac is not AssetClass.STOCKS:
        price *= math.exp(0.1 * (u[6] - 0.5))  # small jitter around the table value
    return _SymbolParams(beta, loading, vol, drift, price, adv)


def _sector_vol(sector: str) -> float:
    if sector in _SECTOR_VOL:
        return _SECTOR_VOL[sector]
    h = int.from_bytes(hashlib.sha256(sector.encode()).digest()[:4], "little") / 2**32
    return 0.08 + 0.07 * h


def _sessions_per_year(cal: str) -> float:
    return {"24/7": 365.0, "24/5": 261.0}.get(cal, 252.0)


# --------------------------------------------------------------------------------------------
# Factors on the calendar-day grid
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Grid:
    days: pd.DatetimeIndex
    weight: np.ndarray  # variance weight per day (1 weekday, _WEEKEND_VAR_WEIGHT weekend)
    state: np.ndarray  # market variance state (× calm variance), crisis and calm tail included
    market: np.ndarray  # market log return per day


def _crisis_window(
    end: pd.Timestamp, offset: int, length: int
) -> tuple[pd.Timestamp, pd.Timestamp, pd.Timestamp]:
    ref = last_n_sessions("XNYS", end, offset + length)
    fall_len = max(1, int(round(_CRISIS_FALL_SHARE * length)))
    return ref[0], ref[fall_len - 1], ref[length - 1]


def _market_grid(
    seed: int, grid_start: pd.Timestamp, end: pd.Timestamp, crisis_offset: int, crisis_length: int
) -> _Grid:
    cal = SP500_CALIBRATION
    days = pd.date_range(grid_start, end, freq="D", unit="ns")
    n_days = len(days)
    weekday = np.asarray(days.day_of_week < 5)
    weight = np.where(weekday, 1.0, _WEEKEND_VAR_WEIGHT)

    calm_var = cal.calm_daily_vol**2
    alpha = cal.garch_alpha
    beta = min(cal.garch_alpha + cal.garch_beta, _PERSISTENCE_CAP) - alpha
    omega = calm_var * (1.0 - alpha - beta)  # variance targeting at the calm level
    z = _std_t(_rng(seed, "market"), cal.garch_nu, n_days)

    # GARCH recursion on weekdays only (scalar loop over ~2k days: ~1 ms).
    h = np.empty(n_days)
    h_cur = calm_var
    for i in range(n_days):
        h[i] = h_cur
        if weekday[i]:
            eps = math.sqrt(h_cur) * z[i]
            h_cur = omega + alpha * eps * eps + beta * h_cur
    state = h / calm_var

    # Scripted crisis: extra variance with an abrupt start and an exponential after-shock.
    cs, fall_end, ce = _crisis_window(end, crisis_offset, crisis_length)
    since_end = np.asarray((days - ce).days, dtype=float)
    profile = np.where(
        (days >= cs) & (days <= ce),
        1.0,
        np.where(since_end > 0, np.exp(-since_end * math.log(2.0) / _CRISIS_DECAY_HALF_LIFE_DAYS), 0.0),
    )
    state = state + (_CRISIS_VOL_MULT**2 - 1.0) * profile
    # Calm tail: the demo must not end in a crisis; cap the state once the after-shock is over.
    tail_start = last_n_sessions("XNYS", end, _CALM_TAIL_SESSIONS)[0]
    tail = np.asarray(days >= tail_start) & (profile < 0.01)
    state = np.where(tail, np.minimum(state, _CALM_TAIL_CAP), state)

    market = z * np.sqrt(calm_var * state * weight) + np.where(weekday, _MARKET_DRIFT_ANNUAL / 252.0, 0.0)
    # Force the crisis path: a fixed fall then a partial rebound, spread over its weekdays.
    for lo, hi, target in ((cs, fall_end, _CRISIS_FALL_LOG), (fall_end, ce, _CRISIS_REBOUND_LOG)):
        mask = np.asarray((days >= lo) & (days <= hi)) if lo == cs else np.asarray((days > lo) & (days <= hi))
        moving = mask & weekday
        if moving.any():
            market[moving] += (target - market[mask].sum()) / moving.sum()
    return _Grid(days=days, weight=weight, state=state, market=market)


# Sectors whose own factor trades through the weekend (crypto): full variance on Sat/Sun.
_WEEKEND_ACTIVE_SECTORS: Final = frozenset({"Digital Assets", "Crypto"})


def _sector_weight(sector: str, grid: _Grid) -> np.ndarray:
    return np.ones(len(grid.days)) if sector in _WEEKEND_ACTIVE_SECTORS else grid.weight


def _sector_daily_vol(sector: str) -> float:
    return _sector_vol(sector) / math.sqrt(365.0 if sector in _WEEKEND_ACTIVE_SECTORS else 252.0)


def _sector_returns(seed: int, sector: str, grid: _Grid) -> np.ndarray:
    z = _std_t(_rng(seed, "sector", sector), 6.0, len(grid.days))
    scale = np.sqrt(_sector_weight(sector, grid)) * grid.state**_SECTOR_STATE_EXP
    return z * _sector_daily_vol(sector) * scale


def crisis_window(
    end: date,
    crisis_end_offset_sessions: int = DEFAULT_CRISIS_END_OFFSET_SESSIONS,
    crisis_length_sessions: int = DEFAULT_CRISIS_LENGTH_SESSIONS,
) -> tuple[pd.Timestamp, pd.Timestamp]:
    """First and last XNYS session of the scripted crisis (the sample's ground truth)."""
    cs, _, ce = _crisis_window(
        pd.Timestamp(end).normalize(), crisis_end_offset_sessions, crisis_length_sessions
    )
    return cs, ce


def market_factor_returns(
    end: date,
    n_sessions: int,
    seed: int = 7,
    *,
    crisis_end_offset_sessions: int = DEFAULT_CRISIS_END_OFFSET_SESSIONS,
    crisis_length_sessions: int = DEFAULT_CRISIS_LENGTH_SESSIONS,
) -> pd.Series:
    """The latent market factor: log return per *calendar day* (the ground truth behind the
    bars of any default-calendar universe generated with the same arguments)."""
    end_ts = pd.Timestamp(end).normalize()
    cs, _, _ = _crisis_window(end_ts, crisis_end_offset_sessions, crisis_length_sessions)
    grid = _market_grid(
        seed,
        _grid_start(end_ts, n_sessions, (), cs),
        end_ts,
        crisis_end_offset_sessions,
        crisis_length_sessions,
    )
    return pd.Series(grid.market, index=grid.days, name="market")


# --------------------------------------------------------------------------------------------
# Bars
# --------------------------------------------------------------------------------------------
def _grid_start(
    end: pd.Timestamp, n_sessions: int, calendars: Iterable[str], crisis_start: pd.Timestamp
) -> pd.Timestamp:
    # XNYS (the longest default calendar) always contributes, so the grid — and with it every
    # factor path — is the same whichever default-calendar symbols are in the universe.
    firsts = [last_n_sessions(c, end, n_sessions + 1)[0] for c in {"XNYS", *calendars}]
    return min(*firsts, crisis_start)


def _empty_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "symbol": pd.Series([], dtype=object).astype(str),
            "date": pd.Series([], dtype="datetime64[ns]"),
            **{c: pd.Series([], dtype=float) for c in ("open", "high", "low", "close")},
            "volume": pd.Series([], dtype="int64"),
            "adj_close": pd.Series([], dtype=float),
        }
    )


def _ar1(innov: np.ndarray, phi: float) -> np.ndarray:
    """u[t] = phi·u[t-1] + innov[t] along axis 0 (a time loop, vectorized across symbols;
    avoids importing scipy.signal, which costs seconds at import time)."""
    out = np.empty_like(innov)
    out[0] = innov[0]
    for t in range(1, len(innov)):
        out[t] = phi * out[t - 1] + innov[t]
    return out


def _round_to(x: np.ndarray, decimals: np.ndarray) -> np.ndarray:
    scale = 10.0**decimals
    return np.round(x * scale) / scale


def generate_sample_bars(
    instruments: Sequence[SampleInstrument],
    end: date,
    n_sessions: int,
    seed: int = 7,
    defects: Iterable[SampleDefect] = (),
    *,
    crisis_end_offset_sessions: int = DEFAULT_CRISIS_END_OFFSET_SESSIONS,
    crisis_length_sessions: int = DEFAULT_CRISIS_LENGTH_SESSIONS,
) -> pd.DataFrame:
    """Daily bars for every instrument: the last ``n_sessions`` sessions of its calendar ending
    on or before ``end``, sorted by (symbol, date). Pure and deterministic in its arguments.

    Columns: symbol, date (tz-naive midnight session label), open, high, low, close,
    volume (int64), adj_close. Defects for symbols not in ``instruments`` are ignored.
    """
    if n_sessions < 2:
        raise ValueError("n_sessions must be >= 2")
    if crisis_length_sessions < 2 or crisis_end_offset_sessions < 0:
        raise ValueError("crisis_length_sessions must be >= 2 and crisis_end_offset_sessions >= 0")
    insts = sorted(instruments, key=lambda i: i.symbol)
    symbols = [i.symbol for i in insts]
    if len(set(symbols)) != len(symbols):
        raise ValueError("duplicate symbols in the sample universe")
    if not insts:
        return _empty_frame()

    end_ts = pd.Timestamp(end).normalize()
    cals = [calendar_name(i.asset_class, i.calendar) for i in insts]
    cs, _, _ = _crisis_window(end_ts, crisis_end_offset_sessions, crisis_length_sessions)
    grid = _market_grid(
        seed,
        _grid_start(end_ts, n_sessions, cals, cs),
        end_ts,
        crisis_end_offset_sessions,
        crisis_length_sessions,
    )
    calm_var = SP500_CALIBRATION.calm_daily_vol**2
    n, n_sym = n_sessions, len(insts)

    # Per-calendar session aggregation: a session's factor return is the sum of the calendar
    # days since the previous session, via differences of cumulative sums.
    cum_w = np.concatenate([[0.0], np.cumsum(grid.weight * grid.state)])
    cum_m = np.concatenate([[0.0], np.cumsum(grid.market)])
    sectors = sorted({i.sector for i in insts})
    sector_cum = {s: np.concatenate([[0.0], np.cumsum(_sector_returns(seed, s, grid))]) for s in sectors}
    sector_w = {
        s: np.concatenate([[0.0], np.cumsum(_sector_weight(s, grid) * grid.state ** (2 * _SECTOR_STATE_EXP))])
        for s in sectors
    }
    cal_cache: dict[str, tuple[pd.DatetimeIndex, np.ndarray, np.ndarray]] = {}
    for c in set(cals):
        sess = last_n_sessions(c, end_ts, n + 1)
        idx = grid.days.get_indexer(sess) + 1  # +1: cumsum arrays are shifted by the leading 0
        cal_cache[c] = (sess[1:], idx[:-1], idx[1:])

    dates = np.empty((n, n_sym), dtype="datetime64[ns]")
    r = np.empty((n, n_sym))
    sig = np.empty((n, n_sym))  # conditional session volatility
    state_s = np.empty((n, n_sym))
    idio_z = np.empty((n, n_sym))
    gap_z = np.empty((n, n_sym))
    u_hi = np.empty((n, n_sym))
    u_lo = np.empty((n, n_sym))
    vol_eps = np.empty((n, n_sym))
    params: list[_SymbolParams] = []
    for j, inst in enumerate(insts):
        rng = _rng(seed, "symbol", inst.symbol)
        p = _symbol_params(inst, rng)
        params.append(p)
        idio_z[:, j] = _std_t(rng, _IDIO_NU[AssetClass(inst.asset_class)], n)
        gap_z[:, j] = rng.standard_normal(n)
        u_hi[:, j] = 1.0 - rng.random(n)  # (0, 1]: log() stays finite
        u_lo[:, j] = 1.0 - rng.random(n)
        vol_eps[:, j] = rng.standard_normal(n)

        sess, prev_i, cur_i = cal_cache[cals[j]]
        spy = _sessions_per_year(cals[j])
        svol = _sector_daily_vol(inst.sector)
        idio_var = (
            max(
                p.vol_annual**2 - p.beta**2 * calm_var * 252.0 - p.loading**2 * _sector_vol(inst.sector) ** 2,
                (0.25 * p.vol_annual) ** 2,
            )
            / spy
        )
        st = grid.state[cur_i - 1]
        idio_sd = math.sqrt(idio_var) * st ** (_IDIO_STATE_EXP)
        mkt = cum_m[cur_i] - cum_m[prev_i]
        sec = sector_cum[inst.sector][cur_i] - sector_cum[inst.sector][prev_i]
        mkt_var = calm_var * (cum_w[cur_i] - cum_w[prev_i])
        sec_var = svol**2 * (sector_w[inst.sector][cur_i] - sector_w[inst.sector][prev_i])
        dates[:, j] = sess.to_numpy()
        r[:, j] = p.beta * mkt + p.loading * sec + idio_sd * idio_z[:, j] + p.drift_annual / spy
        r[:, j] += _planted_alpha(seed, inst, n) / spy
        sig[:, j] = np.sqrt(p.beta**2 * mkt_var + p.loading**2 * sec_var + idio_sd**2)
        state_s[:, j] = st

    start_price = np.array([p.start_price for p in params])
    log_close = np.log(start_price) + np.cumsum(r, axis=0)
    prev_close = np.vstack([np.log(start_price)[None, :], log_close[:-1]])
    # Overnight gap only where the venue closes overnight; 24/x calendars open at the last close.
    exchange = np.array([c not in ("24/5", "24/7") for c in cals], dtype=float)
    gap = exchange * (_GAP_SHARE * r + _GAP_NOISE * sig * gap_z)
    log_open = prev_close + gap
    d = log_close - log_open
    # Exact extremes of a Brownian bridge from open to close: P(max > x) = exp(-2x(x-d)/s²).
    bridge_var = (_RANGE_SCALE * sig) ** 2 * (1.0 - exchange * _GAP_SHARE**2)
    up = 0.5 * (d + np.sqrt(d * d - 2.0 * bridge_var * np.log(u_hi)))
    down = 0.5 * (d - np.sqrt(d * d - 2.0 * bridge_var * np.log(u_lo)))
    log_high, log_low = log_open + up, log_open + down

    # ~6 significant digits, by the starting price (BTC 2 decimals, DOGE 8).
    decimals = np.clip(6 - np.floor(np.log10(start_price)), 2, 10)
    close = _round_to(np.exp(log_close), decimals)
    open_ = _round_to(np.exp(log_open), decimals)
    high = _round_to(np.exp(log_high), decimals)
    low = _round_to(np.exp(log_low), decimals)

    # Volume: AR(1) lognormal noise + |shock| and volatility-state loadings (S&P-calibrated,
    # scaled for single names), around average shares = ADV$ / typical price.
    cal = SP500_CALIBRATION
    phi = cal.volume_ar1
    noise_sd = cal.volume_resid_sd * _SINGLE_NAME_VOLUME_SCALE
    innov = vol_eps * noise_sd * math.sqrt(1.0 - phi**2)
    innov[0] = vol_eps[0] * noise_sd  # start in the stationary distribution
    u_vol = _ar1(innov, phi)
    absz = np.abs(r) / sig
    log_vol_level = 0.5 * np.log(state_s)  # log of the vol state relative to calm
    adv_shares = np.array([p.adv_dollars for p in params]) / np.exp(log_close.mean(axis=0))
    log_volume = (
        np.log(adv_shares)
        + u_vol
        + cal.volume_absz_loading * _SINGLE_NAME_VOLUME_SCALE * (absz - math.sqrt(2.0 / math.pi))
        + cal.volume_vol_elasticity * _SINGLE_NAME_VOLUME_SCALE * log_vol_level
        - 0.5 * noise_sd**2
    )
    volume = np.maximum(np.rint(np.exp(log_volume)), 1.0).astype(np.int64)

    # Long format, symbol-major (columns of the session × symbol matrices, in symbol order).
    cols: dict[str, np.ndarray] = {
        "date": dates.T.ravel(),
        "open": open_.T.ravel(),
        "high": high.T.ravel(),
        "low": low.T.ravel(),
        "close": close.T.ravel(),
        "volume": volume.T.ravel(),
        "adj_close": close.T.ravel().copy(),
    }
    sym_col = np.repeat(np.array(symbols, dtype=object), n)

    by_symbol: dict[str, list[SampleDefect]] = {}
    known = set(symbols)
    for defect in defects:
        if defect.symbol in known:
            by_symbol.setdefault(defect.symbol, []).append(defect)
    if by_symbol:
        pieces: list[dict[str, np.ndarray]] = []
        sym_pieces: list[np.ndarray] = []
        for j, sym in enumerate(symbols):
            block = {k: v[j * n : (j + 1) * n].copy() for k, v in cols.items()}
            if sym in by_symbol:
                block = _apply_defects(block, by_symbol[sym], seed, float(decimals[j]))
            pieces.append(block)
            sym_pieces.append(np.repeat(np.array([sym], dtype=object), len(block["date"])))
        cols = {k: np.concatenate([b[k] for b in pieces]) for k in cols}
        sym_col = np.concatenate(sym_pieces)

    frame = pd.DataFrame({"symbol": sym_col, **cols})
    frame["symbol"] = frame["symbol"].astype(str)
    frame["date"] = frame["date"].astype("datetime64[ns]")
    return frame[SAMPLE_COLUMNS]


# --------------------------------------------------------------------------------------------
# Defects (on one symbol's block of arrays)
# --------------------------------------------------------------------------------------------
_PRICE_COLS: Final = ("open", "high", "low", "close", "adj_close")


def _pick(rng: np.random.Generator, n_rows: int, count: int, taken: set[int], spacing: int = 1) -> list[int]:
    """``count`` interior rows (5 from each edge) not already touched, ``spacing`` apart."""
    candidates = [i for i in range(5, n_rows - 5) if all(abs(i - t) >= spacing for t in taken)]
    chosen: list[int] = []
    for i in rng.permutation(candidates):
        if len(chosen) == count:
            break
        if all(abs(int(i) - c) >= spacing for c in chosen):
            chosen.append(int(i))
    return sorted(chosen)


def _apply_defects(
    block: dict[str, np.ndarray], defects: list[SampleDefect], seed: int, decimals: float
) -> dict[str, np.ndarray]:
    ordered = sorted(enumerate(defects), key=lambda t: DEFECT_KINDS.index(t[1].kind))
    taken: set[int] = set()
    for k, defect in ordered:
        rng = _rng(seed, "defect", defect.symbol, defect.kind, k)
        block = _apply_one(block, defect, rng, taken, decimals)
    return block


def _apply_one(
    b: dict[str, np.ndarray], dfc: SampleDefect, rng: np.random.Generator, taken: set[int], decimals: float
) -> dict[str, np.ndarray]:
    n_rows = len(b["date"])
    rows = dfc.rows if dfc.rows is not None else 3
    rnd = 10.0**decimals
    if dfc.kind == "short_history":
        keep = min(dfc.sessions or 250, n_rows)
        return {k: v[n_rows - keep :] for k, v in b.items()}
    if dfc.kind == "split_jump":
        if dfc.on is not None:
            pos = int(np.searchsorted(b["date"], np.datetime64(pd.Timestamp(dfc.on).normalize(), "ns")))
        else:
            pos = int(0.6 * n_rows)
        pos = min(max(pos, 1), n_rows - 1)
        true_close = b["close"].copy()
        # Yahoo-style back-adjusted adj_close: continuous, equal to close after the split.
        b["adj_close"] = np.round(true_close / dfc.ratio * rnd) / rnd
        for c in ("open", "high", "low", "close"):
            b[c][pos:] = np.round(b[c][pos:] / dfc.ratio * rnd) / rnd
        b["volume"][pos:] = np.rint(b["volume"][pos:] * dfc.ratio).astype(np.int64)
        taken.add(pos)
        return b
    if dfc.kind == "stale":
        run = min(dfc.sessions or 6, n_rows - 10)
        starts = _pick(rng, n_rows - run + 1, 1, taken, spacing=run + 1)
        if not starts:
            return b
        s = starts[0]
        for c in _PRICE_COLS:
            b[c][s + 1 : s + run] = b["close"][s]  # the feed repeated one close `run` times
        b["volume"][s + 1 : s + run] = b["volume"][s]
        taken.update(range(s, s + run))
        return b
    if dfc.kind == "return_spike":
        lr = np.diff(np.log(b["adj_close"]))  # adj_close: a split must not inflate the std
        size = (dfc.magnitude or _SPIKE_SIGMAS) * float(np.std(lr))
        if any(abs(size - math.log(k)) < 0.1 for k in (2, 3, 4)):
            size += 0.2  # a bad print must not look like a 2:1, 3:1 or 4:1 split
        for i in _pick(rng, n_rows, rows, taken, spacing=3):
            factor = math.exp(size if rng.random() < 0.5 else -size)
            for c in _PRICE_COLS:
                b[c][i] = round(b[c][i] * factor * rnd) / rnd
            taken.add(i)
        return b
    if dfc.kind == "volume_spike":
        for i in _pick(rng, n_rows, rows, taken, spacing=2):
            b["volume"][i] = int(round(b["volume"][i] * (dfc.magnitude or _VOLUME_SPIKE)))
            taken.add(i)
        return b
    if dfc.kind == "ohlc_inconsistent":
        for i in _pick(rng, n_rows, rows, taken):
            # A vendor glitch: the high printed below the low (hence below open and close).
            b["high"][i] = math.floor(b["low"][i] * 0.995 * rnd) / rnd
            taken.add(i)
        return b
    if dfc.kind == "non_positive":
        for m, i in enumerate(_pick(rng, n_rows, rows, taken, spacing=2)):
            bad = 0.0 if m == 0 else -float(b["close"][i])
            b["close"][i] = b["adj_close"][i] = bad
            b["low"][i] = min(b["low"][i], bad)
            taken.add(i)
        return b
    if dfc.kind == "missing_sessions":
        count = int(round((dfc.fraction or 0.05) * n_rows))
        interior = [i for i in range(1, n_rows - 1) if i not in taken]
        drop = set(int(i) for i in rng.choice(interior, size=min(count, len(interior)), replace=False))
        keep = np.array([i not in drop for i in range(n_rows)])
        # Re-index `taken` so a later duplicate never lands on a defect row.
        new_pos = np.cumsum(keep) - 1
        remapped = {int(new_pos[t]) for t in taken if keep[t]}
        taken.clear()
        taken.update(remapped)
        return {k: v[keep] for k, v in b.items()}
    # duplicate_dates: a second, slightly different print of the same session right after it.
    picks = _pick(rng, n_rows, rows, taken, spacing=2)
    insert_at = np.array(picks, dtype=int)
    out = {k: np.insert(v, insert_at + 1, v[insert_at]) for k, v in b.items()}
    for m, i in enumerate(picks):
        at = i + 1 + m  # position of the copy after earlier insertions
        eps = (0.001 + 0.004 * rng.random()) * (1 if rng.random() < 0.5 else -1)
        for c in _PRICE_COLS:
            out[c][at] = round(out[c][at] * (1.0 + eps) * rnd) / rnd
        out["volume"][at] = int(round(out["volume"][at] * (1.0 + 5 * eps)))
    return out


# --------------------------------------------------------------------------------------------
# Benchmark universe
# --------------------------------------------------------------------------------------------
_UNIVERSE_FX: Final = ("EUR/USD", "USD/JPY", "GBP/USD", "AUD/USD", "USD/CHF", "USD/CAD", "NZD/USD")
_UNIVERSE_CRYPTO: Final = ("BTC/USD", "ETH/USD", "SOL/USD", "ADA/USD", "XRP/USD", "LTC/USD", "DOT/USD")
_UNIVERSE_COMMODITIES: Final = (
    ("GLD", "Precious Metals"),
    ("USO", "Energy Commodities"),
    ("SLV", "Precious Metals"),
    ("UNG", "Energy Commodities"),
    ("CPER", "Industrial Metals"),
    ("DBA", "Agriculture"),
    ("PPLT", "Precious Metals"),
)


def synthetic_universe(n: int, seed: int = 7) -> list[SampleInstrument]:
    """``n`` instruments for benchmarks: stocks "S0001".. across the 11 GICS sectors, plus
    (when n ≥ 20) about 2 % each of FX pairs, crypto and commodity ETFs (at most 7 of each)."""
    if n < 0:
        raise ValueError("n must be >= 0")
    k = min(max(1, n // 50), 7) if n >= 20 else 0
    others = (
        [SampleInstrument(s, AssetClass.FX, "Currencies") for s in _UNIVERSE_FX[:k]]
        + [SampleInstrument(s, AssetClass.CRYPTO, "Digital Assets") for s in _UNIVERSE_CRYPTO[:k]]
        + [SampleInstrument(s, AssetClass.COMMODITIES, sec) for s, sec in _UNIVERSE_COMMODITIES[:k]]
    )
    n_stocks = n - len(others)
    # Balanced sector counts, shuffled by the seed so sector is not a function of ticker order.
    sectors = [GICS_SECTORS[i % len(GICS_SECTORS)] for i in range(n_stocks)]
    order = _rng(seed, "universe").permutation(n_stocks)
    stocks = [
        SampleInstrument(f"S{i + 1:04d}", AssetClass.STOCKS, sectors[int(order[i])]) for i in range(n_stocks)
    ]
    return stocks + others


# --------------------------------------------------------------------------------------------
# Provider
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Key:
    instruments: tuple[SampleInstrument, ...]
    end: date
    n_sessions: int
    seed: int
    defects: tuple[SampleDefect, ...]
    crisis_end_offset_sessions: int
    crisis_length_sessions: int


def _defect_record(defect: SampleDefect) -> dict[str, Any]:
    """JSON-friendly defect description: only the parameters that apply."""
    rec = {
        k: (v.isoformat() if isinstance(v, date) else v) for k, v in asdict(defect).items() if v is not None
    }
    if defect.kind != "split_jump":
        rec.pop("ratio", None)
    return rec


@lru_cache(maxsize=8)
def _cached_bars(key: _Key) -> dict[str, pd.DataFrame]:
    # One generation per parameter set; per-symbol frames are split once so lookups are cheap.
    frame = generate_sample_bars(
        key.instruments,
        key.end,
        key.n_sessions,
        key.seed,
        key.defects,
        crisis_end_offset_sessions=key.crisis_end_offset_sessions,
        crisis_length_sessions=key.crisis_length_sessions,
    )
    return {str(sym): g.reset_index(drop=True) for sym, g in frame.groupby("symbol", sort=True)}


class SampleProvider:
    """``HistoryProvider`` over the embedded sample market (offline, deterministic)."""

    name = "sample"

    def __init__(
        self,
        instruments: Sequence[SampleInstrument],
        end: date,
        n_sessions: int,
        seed: int = 7,
        defects: Iterable[SampleDefect] = (),
        *,
        crisis_end_offset_sessions: int = DEFAULT_CRISIS_END_OFFSET_SESSIONS,
        crisis_length_sessions: int = DEFAULT_CRISIS_LENGTH_SESSIONS,
    ) -> None:
        self.instruments = {i.symbol: i for i in instruments}
        self.end = pd.Timestamp(end).date()
        self.n_sessions = int(n_sessions)
        self.seed = int(seed)
        self.defects = tuple(defects)
        self._key = _Key(
            instruments=tuple(sorted(self.instruments.values(), key=lambda i: i.symbol)),
            end=self.end,
            n_sessions=self.n_sessions,
            seed=self.seed,
            defects=self.defects,
            crisis_end_offset_sessions=int(crisis_end_offset_sessions),
            crisis_length_sessions=int(crisis_length_sessions),
        )

    def _lineage(self, inst: SampleInstrument) -> dict[str, Any]:
        return {
            "synthetic": True,
            "generator": GENERATOR_NAME,
            "seed": self.seed,
            "calibration": CALIBRATION_DESCRIPTION,
            "end": self.end.isoformat(),
            "n_sessions": self.n_sessions,
            "calendar": calendar_name(inst.asset_class, inst.calendar),
            "asset_class": str(AssetClass(inst.asset_class)),
            "crisis_end_offset_sessions": self._key.crisis_end_offset_sessions,
            "crisis_length_sessions": self._key.crisis_length_sessions,
            "defects": [_defect_record(d) for d in self.defects if d.symbol == inst.symbol],
        }

    def _result(
        self, bars: dict[str, pd.DataFrame], request: InstrumentRequest, start: date, end: date
    ) -> FetchResult:
        inst = self.instruments.get(request.symbol)
        if inst is None or request.symbol not in bars:
            raise ProviderEmptyError(f"sample market has no symbol {request.symbol!r}", provider=self.name)
        full = bars[request.symbol]
        lo, hi = pd.Timestamp(start).normalize(), pd.Timestamp(end).normalize()
        d = full["date"].to_numpy()
        if len(d) < 2 or bool((d[1:] >= d[:-1]).all()):  # sorted by date (always, bar defects): slice
            frame = full.iloc[np.searchsorted(d, lo.to_datetime64(), "left"):
                              np.searchsorted(d, hi.to_datetime64(), "right")].reset_index(drop=True)
        else:
            frame = full[(full["date"] >= lo) & (full["date"] <= hi)].reset_index(drop=True)
        if frame.empty:
            raise ProviderEmptyError(
                f"sample market has no bars for {request.symbol!r} in [{lo.date()}, {hi.date()}]",
                provider=self.name,
            )
        # The "response as received" is the records of this slice, held as columns (RawRecords).
        raw = RawRecords({
            "symbol": request.symbol,
            "date": frame["date"].to_numpy(dtype="datetime64[ns]"),
            **{c: frame[c].to_numpy(dtype=np.int64 if c == "volume" else np.float64)
               for c in ("open", "high", "low", "close", "volume", "adj_close")},
        })
        return FetchResult(
            symbol=request.symbol, provider=self.name, frame=frame, raw=raw, lineage=self._lineage(inst)
        )

    def fetch_daily_bars(self, request: InstrumentRequest, start: date, end: date) -> FetchResult:
        return self._result(_cached_bars(self._key), request, start, end)

    def fetch_many(self, requests: Sequence[InstrumentRequest], start: date, end: date) -> list[FetchResult]:
        """Results for every request it can serve, in request order, from one generation.

        A symbol the sample does not know (or without bars in the window) is left out rather
        than failing the batch: per-symbol problems exclude the symbol (§B5), and
        ``fetch_daily_bars`` raises ``ProviderEmptyError`` for it.
        """
        bars = _cached_bars(self._key)
        out: list[FetchResult] = []
        for req in requests:
            try:
                out.append(self._result(bars, req, start, end))
            except ProviderEmptyError:
                continue
        return out
