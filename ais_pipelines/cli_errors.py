"""One-line errors for the ``ais`` command (issue 10, item 8).

An expected failure prints one line — ``REASON_CODE: what happened`` — and exits 1 (a refusal)
or 2 (a usage error: bad option, bad date). A traceback only with ``--debug``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import typer

from ais_pipelines.core.reason_codes import ReasonCode

try:  # typer ≥ 0.2x vendors its own click; the exceptions a typer app raises are those
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover - older typer on upstream click
    from click.exceptions import UsageError  # type: ignore[assignment]

EXIT_REFUSED, EXIT_USAGE = 1, 2


def reason_of(exc: BaseException) -> str:
    """The most specific reason code an exception carries (attribute, message prefix, or type)."""
    for attr in ("reason_code", "reason"):
        value = getattr(exc, attr, None)
        if isinstance(value, ReasonCode):
            return str(value)
    codes = getattr(exc, "reason_codes", None)
    if codes and str(next(iter(codes))) in ReasonCode.__members__:
        return str(next(iter(codes)))
    text = str(getattr(exc, "description", None) or exc)
    head = text.split(":", 1)[0].strip()
    if head in ReasonCode.__members__:
        return head
    name = type(exc).__name__
    module = type(exc).__module__
    if name in ("PolicyFileError", "PolicyError"):
        return str(ReasonCode.POLICY_UNREADABLE)
    if module.startswith("sqlalchemy") or name in ("LedgerError",):
        return str(ReasonCode.LEDGER_UNREADABLE)
    if module.startswith("duckdb"):
        return str(ReasonCode.WAREHOUSE_MISSING) if "No such file" in text else "WAREHOUSE_ERROR"
    return "ERROR"


def one_line(exc: BaseException) -> str:
    code = reason_of(exc)
    text = " ".join(str(getattr(exc, "description", None) or exc).split())
    if text.startswith(f"{code}:"):
        text = text[len(code) + 1:].strip()
    return f"{code}: {text or type(exc).__name__}"[:2000]


def run_cli(app: Callable[..., Any], argv: Sequence[str] | None = None) -> int:
    """Run a typer/click app and turn every failure into one line and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        rv = app(args=args, standalone_mode=False, prog_name="ais")
    except typer.Exit as exc:
        return exc.exit_code
    except UsageError as exc:
        if debug:
            raise
        path = exc.ctx.command_path if exc.ctx else "ais"
        hint = f" (see: {path} --help)"
        code = getattr(exc, "reason_code", None) or ReasonCode.USAGE_ERROR  # e.g. NOT_A_SESSION
        typer.echo(f"{code}: {exc.format_message()}{hint}", err=True)
        return EXIT_USAGE
    except typer.Abort:
        typer.echo("aborted", err=True)
        return EXIT_REFUSED
    except Exception as exc:  # expected or not: one line, the reason code first
        if debug:
            raise
        typer.echo(one_line(exc), err=True)
        return EXIT_REFUSED
    return rv if isinstance(rv, int) else 0
