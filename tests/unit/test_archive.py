"""The raw archive (§B2): gzip JSON, readable by the standard library, same content as json.dump."""

from __future__ import annotations

import gzip
import json
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from ais_pipelines.ingestion import archive_raw
from ais_pipelines.market_data.base import FetchResult


def _read(path: Path) -> object:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return json.load(fh)


def test_archive_round_trips_like_json_dump(tmp_path: Path) -> None:
    raw = [
        {"symbol": "AAPL", "date": "2024-01-02", "open": 185.64, "high": 188.44, "low": 183.885,
         "close": 185.64, "volume": 82488700, "adj_close": 184.290405, "note": "é ünïcode"},
        {"symbol": "AAPL", "date": "2024-01-03", "open": 0.1 + 0.2, "volume": 0, "split": None, "ok": True},
    ]
    lineage = {"url": "https://example.invalid/v8", "fetched_at": datetime(2024, 1, 4, 21, 5, 7),
               "session": date(2024, 1, 3), "rows": np.int64(2), "ratio": np.float64(0.25), 7: "int key"}
    res = FetchResult(symbol="BRK/B", provider="yahoo", frame=pd.DataFrame(), raw=raw, lineage=lineage)
    path = archive_raw(tmp_path, res)
    assert path == tmp_path / "yahoo" / "BRK_B.json.gz"
    body = {"symbol": "BRK/B", "provider": "yahoo", "lineage": lineage, "response": raw}
    # The reference: what the standard library wrote before (default=str for non-JSON types).
    assert _read(path) == json.loads(json.dumps(body, default=str))
    got = _read(path)
    assert got["lineage"]["fetched_at"] == "2024-01-04 21:05:07"  # str(), not orjson's ISO form
    assert got["response"][1]["open"] == 0.1 + 0.2  # floats round-trip exactly


def test_archive_non_finite_is_null_and_huge_ints_fall_back(tmp_path: Path) -> None:
    res = FetchResult(symbol="X", provider="files", frame=pd.DataFrame(),
                      raw={"close": float("nan"), "big": 2**70})
    body = _read(archive_raw(tmp_path, res))
    assert body["response"]["big"] == 2**70  # beyond 64 bits: the standard-library path
    res = FetchResult(symbol="Y", provider="files", frame=pd.DataFrame(), raw={"close": float("nan"), "v": 1.5})
    assert _read(archive_raw(tmp_path, res))["response"] == {"close": None, "v": 1.5}


def test_columnar_records_archive_equals_the_per_row_dicts(tmp_path: Path) -> None:
    """The sample market's columnar response (RawRecords) archives to exactly the bytes of the
    old path: one dict per bar, encoded by orjson (the reference), with defects planted."""
    import orjson

    from ais_pipelines.core.asset_classes import AssetClass
    from ais_pipelines.market_data.base import InstrumentRequest, RawRecords
    from ais_pipelines.market_data.sample import SampleDefect, SampleInstrument, SampleProvider

    insts = [SampleInstrument("AAPL", AssetClass.STOCKS, "Information Technology"),
             SampleInstrument("BTC-USD", AssetClass.CRYPTO, "Digital Assets")]
    provider = SampleProvider(insts, date(2026, 11, 20), 300,
                              defects=[SampleDefect("AAPL", "return_spike"), SampleDefect("AAPL", "non_positive"), SampleDefect("AAPL", "duplicate_dates"), SampleDefect("BTC-USD", "stale")])
    for inst in insts:
        res = provider.fetch_daily_bars(InstrumentRequest(inst.symbol, inst.asset_class), date(2025, 1, 1),
                                        date(2026, 11, 20))
        f = res.frame
        old = [{"symbol": inst.symbol, "date": d.date().isoformat(), "open": float(o), "high": float(h),
                "low": float(lw), "close": float(c), "volume": int(v), "adj_close": float(a)}
               for d, o, h, lw, c, v, a in zip(f["date"], f["open"], f["high"], f["low"], f["close"],
                                               f["volume"], f["adj_close"], strict=True)]
        assert isinstance(res.raw, RawRecords) and res.raw == old and res.raw[-1] == old[-1]
        assert res.raw.to_json() == orjson.dumps(old)
        path = archive_raw(tmp_path, res)
        with gzip.open(path, "rb") as fh:
            written = fh.read()
        as_dicts = FetchResult(symbol=res.symbol, provider=res.provider, frame=f, raw=old, lineage=res.lineage)
        with gzip.open(archive_raw(tmp_path / "old", as_dicts), "rb") as fh:
            assert written == fh.read()
    odd = RawRecords({"k%s": np.array([1.5, float("nan")]), "s": np.array(['a"%b', "é"]), "c": "x%y", "n": 3})
    assert odd.to_json() == orjson.dumps(odd.to_records())
    assert RawRecords({"a": np.array([], dtype=float)}).to_json() == b"[]"
