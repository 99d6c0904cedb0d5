"""One BLAS thread per process where the processes themselves are the parallelism (issue 12).

The replay runs its two halves in two processes on two cores (plus, during a regime refit, a
third for the second optimiser start). OpenBLAS starts a thread per core in each of them, and
threads that spin waiting for a busy core made a 63 × 100 SVD take 22 ms instead of 4 ms (a
40-session, 100-symbol replay: 30.0 s with the default threads, 28.0 s with one). The results do
not depend on the thread count (``core.forecasts`` sums with ``math.fsum`` rather than a BLAS dot
that splits its sum by thread; tests compare replays run both ways table for table).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any


def one_blas_thread() -> AbstractContextManager[Any]:
    """Limit BLAS and OpenMP pools to one thread; as a context, restored on exit (else kept)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)
