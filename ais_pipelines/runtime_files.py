"""Owner-only runtime files (issue 10, item 7): the runtime directory, ledger, warehouse and
key file hold positions, approvals and secrets — nobody but their owner reads them."""

from __future__ import annotations

import os
from pathlib import Path

from ais_pipelines.core.calendar_names import CALENDAR_CACHE_ENV as CALENDAR_CACHE_ENV  # what it sets

PRIVATE_UMASK = 0o077


def private_umask() -> int:
    """Files and directories this process creates from now on are owner-only. Returns the old mask."""
    return os.umask(PRIVATE_UMASK)


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) as needed; the directory itself is made 0700."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(p, 0o700)
    return p


def runtime_dir_is_ours(path: Path) -> bool:
    """Only a directory that holds this project's runtime files (never a shared one like /tmp,
    which has the sticky bit) may be made owner-only."""
    import stat

    if not path.is_dir() or path.stat().st_uid != os.getuid() or path.stat().st_mode & stat.S_ISVTX:
        return False
    return any((path / name).exists() for name in ("dagster_home", "ledger.sqlite", "warehouse.duckdb"))


def private_file(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` empty if missing, with mode 0600 from the first instant (no chmod race)."""
    p = Path(path)
    os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o600))
    os.chmod(p, 0o600)
    return p


def restrict(path: str | os.PathLike[str]) -> None:
    """Make an existing file (and SQLite's -wal/-shm companions) owner-only."""
    for candidate in (Path(path), Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}.wal")):
        if candidate.exists():
            os.chmod(candidate, 0o600)


def use_calendar_cache(runtime_root: str | os.PathLike[str]) -> None:
    """Keep the calendars' session tables under ``<runtime>/cache/calendars`` (unless the
    environment already names a folder): a CLI call or sensor tick then reads five arrays
    instead of building an ``ExchangeCalendar`` (~0.4 s)."""
    os.environ.setdefault(CALENDAR_CACHE_ENV, str(Path(runtime_root) / "cache" / "calendars"))
