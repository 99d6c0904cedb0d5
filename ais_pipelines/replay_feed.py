"""The market half of each replayed night (issue 12): ingestion and the book-independent
steps, on the replay's own connection or up to AHEAD sessions ahead on a second core. No
Dagster.

A replayed night has two halves. The market half — ingest, quality, features, macro series,
regime, model refit, forecasts, decay, scenarios (:func:`ais_pipelines.nightly.run_market_night`)
— reads market data and earlier nights' models, never the book. The book half — lifecycle,
candidates, auction, CVaR, proposals, then the session's execution and valuation — reads the book
the previous session left, so it runs in order, session after session.

:class:`MarketFeed` runs the market half on the replay's connection. :class:`WorkerFeed` runs the
same :class:`MarketFeed` in a spawned worker process, on its own in-memory warehouse that records
its writes (``ReadCachingWarehouse(record=True)``), up to :data:`AHEAD` sessions ahead; each night
and each ingestion comes back as its write log and outputs, which the replay applies to its own
warehouse where :class:`MarketFeed` would have made them (before the book half of D; the
ingestion of D+1 after it). So the replay's warehouse, ledger and digest are those of the inline
run (tests compare every table) while the two halves run on two cores. The worker is spawned
once per process and kept (its imports cost seconds); ``AIS_REPLAY_WORKER=0`` or a one-core
machine keeps everything inline.
"""

from __future__ import annotations

import os
import queue
import time
import traceback
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ais_pipelines import bars_cache, nightly
from ais_pipelines.config import Policies
from ais_pipelines.replay_ingest import IncrementalIngestion
from ais_pipelines.warehouse import read_bars

AHEAD = 6  # sessions the worker may run ahead (each a night's write log in memory): it keeps working while the replay flushes
FLUSH_EVERY = 21  # sessions between the batched writes of held partitions (replay_store)


class ReplayError(RuntimeError):
    """The replay cannot start (bad range, out directory in use, no data for D+1)."""




def _providers(pol: Policies, name: str) -> tuple[str, dict[str, Any], frozenset[str]]:
    from ais_pipelines.market_data.routing import entitled_providers

    entitled = entitled_providers(pol.providers, __import__("os").environ)
    if name == "sample":
        from ais_pipelines.market_data.sample import SampleDefect, SampleInstrument, SampleProvider

        cfg = pol.providers.sample
        inst = [SampleInstrument(i.symbol, i.resolved_class, i.sector, i.calendar) for i in pol.universe.symbols]
        defects = [SampleDefect(**d.model_dump(exclude_none=True)) for d in cfg.defects]
        return name, {"sample": WindowedHistory(SampleProvider(inst, end=cfg.end_session, n_sessions=cfg.n_sessions,
                                                               seed=cfg.seed, defects=defects))}, entitled
    if name == "files":
        import os

        from ais_pipelines.market_data.files import FilesProvider

        directory = os.environ.get("AIS_FILES_DIR")
        if not directory:
            raise ReplayError("--provider files needs AIS_FILES_DIR")
        return name, {"files": FilesProvider(directory)}, entitled
    raise ReplayError(f"replay provider must be sample or files (point-in-time history on this machine), got {name!r}")


class WindowedHistory:
    """A deterministic history provider answered from one full response per symbol, sliced to
    each night's window: the rows (frame and raw) the provider itself returns for
    ``[start, end]``, without regenerating and re-serialising the whole history every session."""

    def __init__(self, provider: Any) -> None:
        self.provider = provider
        self.name = provider.name
        self._full: dict[str, Any] = {}
        self._dates: dict[str, tuple[np.ndarray, bool]] = {}  # symbol → (dates, sorted): searched nightly

    def _whole(self, request: Any) -> Any:
        from ais_pipelines.market_data.base import ProviderError

        key = request.symbol
        if key not in self._full:
            try:
                # Whole history; bounds inside datetime64[ns] (1677–2262), the bars' own unit.
                self._full[key] = self.provider.fetch_daily_bars(request, date(1900, 1, 1), date(2200, 12, 31))
            except ProviderError as exc:
                self._full[key] = exc
        return self._full[key]

    def fetch_daily_bars(self, request: Any, start: date, end: date) -> Any:
        from dataclasses import replace

        from ais_pipelines.market_data.base import ProviderEmptyError, RawRecords

        whole = self._whole(request)
        if isinstance(whole, Exception):
            raise whole
        lo, hi = pd.Timestamp(start).normalize(), pd.Timestamp(end).normalize()
        if request.symbol not in self._dates:
            col = whole.frame["date"]
            self._dates[request.symbol] = (col.to_numpy(), bool(col.is_monotonic_increasing))
        dates, ordered = self._dates[request.symbol]
        if ordered:  # one contiguous slice (the generator's order)
            a = int(dates.searchsorted(lo.to_datetime64(), "left"))
            b = int(dates.searchsorted(hi.to_datetime64(), "right"))
            rows: slice | np.ndarray = slice(a, b)
        else:
            rows = np.flatnonzero((dates >= lo.to_datetime64()) & (dates <= hi.to_datetime64()))
        frame = whole.frame.iloc[rows].reset_index(drop=True)
        raw = whole.raw.take(rows) if isinstance(whole.raw, RawRecords) else (
            whole.raw[rows] if isinstance(rows, slice) else [whole.raw[i] for i in rows])
        if frame.empty:
            raise ProviderEmptyError(f"sample market has no bars for {request.symbol!r} in [{lo.date()}, {hi.date()}]",
                                     provider=self.name)
        return replace(whole, frame=frame, raw=raw)

    def fetch_many(self, requests: Any, start: date, end: date) -> list[Any]:
        from ais_pipelines.market_data.base import ProviderError

        out = []
        for req in requests:
            try:
                out.append(self.fetch_daily_bars(req, start, end))
            except ProviderError:
                continue  # as the provider's fetch_many: a symbol it cannot serve is left out
        return out


def ingest_session(con: Any, pol: Policies, ingestor: IncrementalIngestion, day: date, archive_root: Path) -> None:
    """The nightly ingestion of ``day``: the same two stages as raw_daily_bars + daily_bars, fed
    the full fetch window's outcome incrementally (:mod:`ais_pipelines.replay_ingest`)."""
    from ais_pipelines.data_stages import promote_staged_bars, store_ingestion

    run_id = f"replay-{day.isoformat()}"
    outcome = ingestor.outcome(pol, day, archive_root / run_id)
    stamp = pd.Timestamp(day) + pd.Timedelta(hours=23)  # deterministic: the night of ``day``
    held = ingestor.last_day_before
    store_ingestion(con, outcome, run_id, day, stamp=stamp)
    stats, _, _ = promote_staged_bars(con, run_id, summarize=False)
    if ingestor.window_start is not None:  # a full-window night re-delivers (and re-stamps) these rows
        con.execute("UPDATE bars SET run_id = ? WHERE date >= ? AND run_id <> ?",
                    [run_id, ingestor.window_start.to_pydatetime(), run_id])
        if held is not None and stats.inserted and not stats.updated and not stats.unchanged:
            # night ``day`` (run id ``run_id``) reads the bars held in memory plus tonight's rows
            bars_cache.extend(con, run_id, read_bars(con, start=held + timedelta(days=1)))


# --------------------------------------------------------------------------------------------
# the market half, inline


@dataclass(frozen=True)
class NightPlan:
    """Session D, the session D+1 it trades, and whether D refits the models."""

    session: date
    traded: date
    refit: bool


class MarketFeed:
    """The market half of each night, on the connection it is given."""

    def __init__(self, cfg: Any, pol: Policies) -> None:
        self.cfg, self.pol = cfg, pol
        name, providers, entitled = _providers(pol, cfg.provider)
        self.ingestor = IncrementalIngestion(providers, name, entitled)

    def first(self, con: Any, day: date) -> None:
        """The ingestion up to the first replayed session."""
        ingest_session(con, self.pol.as_of_session(day), self.ingestor, day, self.cfg.out / "raw")

    def night(self, con: Any, step: NightPlan) -> nightly.MarketNight:
        return nightly.run_market_night(con, self.pol.as_of_session(step.session), pd.Timestamp(step.session),
                                        self.cfg.out / nightly.WARM_DIR, refit=step.refit,
                                        run_id=f"replay-{step.session}")

    def ingest(self, con: Any, step: NightPlan) -> None:
        """The ingestion of D+1 (the session D's orders trade in), after D's night."""
        ingest_session(con, self.pol.as_of_session(step.session), self.ingestor, step.traded, self.cfg.out / "raw")

    def close(self, ok: bool) -> dict[str, float]:
        return {}


# --------------------------------------------------------------------------------------------
# the market half, up to AHEAD sessions ahead in a worker process


class MarketWorkerError(RuntimeError):
    """The market worker process stopped without an answer (killed, out of memory)."""


def _put(results: Any, item: tuple[Any, ...], parent: int) -> bool:
    """Queue ``item`` for the sender, waiting while the worker is AHEAD; False once orphaned."""
    while True:
        if os.getppid() != parent:
            return False
        try:
            results.put(item, timeout=1.0)
            return True
        except queue.Full:
            continue


def _pump(out: queue.Queue, conn: Any) -> None:
    """The worker's sender thread: pickles and sends what ``_produce`` queued, in order (the
    replay holds the only read end of the pipe: a worker that dies mid-message is its EOF)."""
    while True:
        item = out.get()
        try:
            conn.send(item)
        except (BrokenPipeError, EOFError, OSError):
            os._exit(0)  # the replay has gone
        except Exception:  # noqa: BLE001 - an answer that does not pickle: its text
            conn.send(("error", RuntimeError(repr(item[1])), f"{item[2]}\n(unpicklable {item[0]!r})", 0.0))


def _produce(cfg: Any, plan: list[NightPlan], results: Any, parent: int) -> None:
    """The worker's side of one replay: MarketFeed on a recording in-memory warehouse."""
    import duckdb

    from ais_pipelines.replay_store import ReadCachingWarehouse

    con = ReadCachingWarehouse(duckdb.connect(":memory:"), record=True)
    try:
        feed = MarketFeed(cfg, Policies(cfg.policies_dir, cfg.universe_file))
        t = time.perf_counter()
        feed.first(con, plan[0].session)
        if not _put(results, ("ingest", None, con.take_log(), time.perf_counter() - t), parent):
            return
        for i, step in enumerate(plan):
            t = time.perf_counter()
            market = feed.night(con, step)
            if not _put(results, ("night", market, con.take_log(), time.perf_counter() - t), parent):
                return
            t = time.perf_counter()
            feed.ingest(con, step)
            if not _put(results, ("ingest", None, con.take_log(), time.perf_counter() - t), parent):
                return
            if (i + 1) % FLUSH_EVERY == 0:
                con.flush()
        _put(results, ("done", None, [], 0.0), parent)
    except BaseException as exc:  # noqa: BLE001 - the replay re-raises it, with this traceback
        _put(results, ("error", exc, traceback.format_exc(), 0.0), parent)
    finally:
        con.close()


def _worker_main(jobs: Any, conn: Any, parent: int) -> None:
    """A spawned worker: one replay's market half per job, until told to stop or orphaned."""
    import signal
    import threading

    from ais_pipelines.blas_threads import one_blas_thread

    nightly.die_with_parent()
    one_blas_thread()  # kept for the worker's life: the replay's process is the other core's work
    signal.signal(signal.SIGTERM, lambda *_: os._exit(143))  # its regime pool dies with it (die_with_parent)
    results: queue.Queue = queue.Queue(AHEAD * 2)  # the bound: how far ahead the worker runs
    threading.Thread(target=_pump, args=(results, conn), name="ais-replay-market-sender", daemon=True).start()
    try:
        while True:
            try:
                job = jobs.get(timeout=2.0)
            except queue.Empty:
                if os.getppid() != parent:
                    return
                continue
            if job is None:
                return
            cfg, plan, environ = job
            os.environ.clear()  # the replay's environment now (a kept worker was spawned earlier)
            os.environ.update(environ)
            _produce(cfg, plan, results, parent)
    finally:
        nightly.shutdown_regime_fit_worker()


@dataclass
class _Worker:
    process: Any
    jobs: Any
    results: Any

    def stop(self) -> None:
        self.results.close()
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(10)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(5)


_WORKER: _Worker | None = None


def _worker() -> _Worker:
    global _WORKER
    if _WORKER is None or not _WORKER.process.is_alive():
        import atexit
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        jobs = ctx.Queue()
        results, sender = ctx.Pipe(duplex=False)
        # not a daemon: its nights refit the regime in a process pool of their own
        proc = ctx.Process(target=_worker_main, args=(jobs, sender, os.getpid()), name="ais-replay-market",
                           daemon=False)
        proc.start()
        sender.close()  # the worker holds the only write end: its death is this end's EOF
        _WORKER = _Worker(proc, jobs, results)
        atexit.register(_stop_worker)  # before multiprocessing's own exit hook joins it
    return _WORKER


def _stop_worker() -> None:
    global _WORKER
    if _WORKER is not None:
        w, _WORKER = _WORKER, None
        try:
            w.jobs.put(None)
            w.process.join(10)
        finally:
            w.stop()


def worker_enabled() -> bool:
    return (os.cpu_count() or 1) > 1 and os.environ.get("AIS_REPLAY_WORKER", "1") != "0"


class WorkerFeed:
    """:class:`MarketFeed`'s nights from the worker process: each one's write log applied to the
    replay's connection (``ReadCachingWarehouse.apply_log``) when the replay reaches it."""

    def __init__(self, cfg: Any, plan: list[NightPlan]) -> None:
        self.worker = _worker()
        self.worker.jobs.put((cfg, plan, dict(os.environ)))
        self.seconds = {"market": 0.0, "ingest": 0.0}
        self.done = False

    def _next(self, con: Any, kind: str) -> Any:
        while True:
            try:
                if self.worker.results.poll(1.0):
                    what, value, log, seconds = self.worker.results.recv()
                    break
            except (EOFError, OSError):
                pass
            else:
                if self.worker.process.is_alive():
                    continue
            self.worker.process.join(5)
            raise MarketWorkerError(f"the replay's market worker exited (code {self.worker.process.exitcode})"
                                    " without an answer")
        if what == "error":
            value.add_note(f"in the replay's market worker:\n{log}")
            self.done = True
            raise value
        if what != kind:
            raise MarketWorkerError(f"the replay's market worker answered {what!r} where {kind!r} was due")
        if log:
            con.apply_log(log)
        if kind != "done":
            self.seconds["market" if kind == "night" else kind] += seconds
        return value

    def first(self, con: Any, day: date) -> None:
        self._next(con, "ingest")

    def night(self, con: Any, step: NightPlan) -> nightly.MarketNight:
        return self._next(con, "night")

    def ingest(self, con: Any, step: NightPlan) -> None:
        self._next(con, "ingest")

    def close(self, ok: bool) -> dict[str, float]:
        """After the last session; a replay that failed stops the worker (the next one spawns anew)."""
        if ok:
            try:
                self._next(None, "done")
                self.done = True
            except MarketWorkerError:
                pass
        if not self.done:
            global _WORKER
            self.worker.stop()
            if _WORKER is self.worker:
                _WORKER = None
        return {f"worker_{k}": v for k, v in self.seconds.items()}


def market_feed(cfg: Any, pol: Policies, plan: list[NightPlan]) -> MarketFeed | WorkerFeed:
    """The worker on a machine with a second core (``AIS_REPLAY_WORKER=0``: inline)."""
    return WorkerFeed(cfg, plan) if worker_enabled() else MarketFeed(cfg, pol)
