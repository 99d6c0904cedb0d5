"""Symbol shards (issue 15): a stable split of the universe for per-symbol stages run in parallel.

A symbol's shard is a hash of its name modulo the shard count, so adding or removing a symbol
never moves another one (only changing the count re-deals them). No Dagster here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from ais_pipelines.config import Policies, Universe


def shard_of(symbol: str, shards: int) -> int:
    """Stable across processes and Python versions (``hash()`` is salted per process)."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1 (got {shards})")
    return int.from_bytes(hashlib.blake2b(symbol.encode(), digest_size=8).digest(), "big") % shards


def shard_symbols(symbols: Iterable[str], shard: int, shards: int) -> list[str]:
    return [s for s in symbols if shard_of(s, shards) == shard]


class ShardPolicies(Policies):
    """The same policies (the same loaded files, as of the same session) with the universe cut to
    one shard's symbols: what a per-symbol stage function needs to assess only its shard."""

    def __init__(self, base: Policies, symbols: Iterable[str]) -> None:
        super().__init__(base.directory, base.universe_file, as_of=base.as_of)
        self._loaded, self._versions = base._loaded, base._versions
        self._keep = frozenset(symbols)
        self._cut: tuple[Universe, Universe] | None = None

    @property
    def universe(self) -> Universe:
        full = super().universe
        if self._cut is None or self._cut[0] is not full:  # one copy per loaded file, not per access
            self._cut = (full, full.model_copy(update={"symbols": [i for i in full.symbols if i.symbol in self._keep]}))
        return self._cut[1]
